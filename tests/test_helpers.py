"""The numbered scripts are self-contained, so small helpers are repeated on purpose (as cleanrl does);
these tests keep every copy byte-identical and every script free of imports from the others."""

import ast
import builtins
import re
import symtable

import pytest

from conftest import ROOT

SCRIPTS = sorted(ROOT.glob("0[1-6]_*.py"))
STAGE_SPECIFIC = {"parse_args", "main"}  # each stage has its own


def top_level_defs(path):
    src = path.read_text()
    tree = ast.parse(src)
    lines = src.splitlines(keepends=True)
    out = {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            start = node.lineno - 1 - len(node.decorator_list)
            out[node.name] = "".join(lines[start:node.end_lineno])
        elif isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            out[node.targets[0].id] = "".join(lines[node.lineno - 1:node.end_lineno])   # shared constants too
    return out


def test_six_scripts():
    assert [p.name for p in SCRIPTS] == ["01_sft.py", "02_reward.py", "03_split.py", "04_dpo.py",
                                         "05_ppo.py", "06_eval.py"]


def test_repeated_helpers_are_identical():
    defs = {p.name: top_level_defs(p) for p in SCRIPTS}
    names = {n for d in defs.values() for n in d} - STAGE_SPECIFIC
    shared = 0
    for name in sorted(names):
        copies = {f: d[name] for f, d in defs.items() if name in d}
        if len(copies) > 1:
            shared += 1
            first = next(iter(copies.values()))
            differ = [f for f, src in copies.items() if src != first]
            assert not differ, f"helper {name!r} differs between {sorted(copies)}: {differ}"
    assert shared >= 15  # token_logps, collate, encode, reward_scores, sample_responses, ...


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: p.name)
def test_scripts_import_no_other_stage(path):
    src = path.read_text()
    assert not re.search(r"^\s*(from|import)\s+_?\d\d_", src, re.M)
    assert not re.search(r"(import_module|spec_from_file_location)\(.*\d\d_[a-z]", src)
    tree = ast.parse(src)
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    allowed = {"argparse", "contextlib", "gzip", "json", "math", "os", "random", "re", "shutil", "signal", "sys", "time",
               "zlib", "pathlib", "torch", "tqdm", "transformers", "datasets", "builtin_task", "importlib",
               "resource", "socket", "urllib", "matplotlib"}
    assert imported <= allowed, imported - allowed


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: p.name)
def test_module_docstring_is_the_contract(path):
    doc = ast.get_docstring(ast.parse(path.read_text()))
    assert "arXiv" in doc and "Reads:" in doc and "Writes:" in doc and "python " in doc


def undefined_globals(path):
    """Names a script reads as globals but neither defines, imports nor gets from builtins (symtable)."""
    top = symtable.symtable(path.read_text(), str(path), "exec")
    defined = {s.get_name() for s in top.get_symbols() if s.is_assigned() or s.is_imported()}
    defined |= set(dir(builtins)) | {"__file__", "__name__", "__doc__"}
    missing, tables = set(), [top]
    while tables:
        t = tables.pop()
        tables += t.get_children()
        missing |= {s.get_name() for s in t.get_symbols()
                    if s.is_referenced() and (t is top or s.is_global()) and s.get_name() not in defined}
    return missing


@pytest.mark.parametrize("path", SCRIPTS + [ROOT / "builtin_task.py", ROOT / "bench.py"], ids=lambda p: p.name)
def test_every_name_a_script_calls_is_defined_or_imported(path):
    assert not undefined_globals(path)


def test_the_undefined_name_check_finds_one(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import os\n\ndef f(x):\n    y = os.sep + x\n    return mixture_logps(y)\n")
    assert undefined_globals(bad) == {"mixture_logps"}
