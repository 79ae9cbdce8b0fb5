"""The numbered scripts are self-contained, so small helpers are repeated on purpose (as cleanrl does);
these tests keep every copy byte-identical and every script free of imports from the others."""

import ast
import builtins
import re
import symtable

import pytest

from conftest import ROOT

SCRIPTS = sorted(ROOT.glob("0[1-6]_*.py"))
MARK = "# --- plumbing: the same in every stage; skip on first read"
MAIN_GUARD = '\nif __name__ == "__main__":'


def split_script(path):
    """(the stage's own code, the plumbing block) of a script: the block runs from MARK to the main guard."""
    src = path.read_text()
    start, end = src.index(MARK), src.rindex(MAIN_GUARD)   # the last guard: one more stands before `import torch`
    assert start < end, path.name
    return src[:start], src[start:end]


def top_level_names(src):
    tree = ast.parse(src)
    return {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))} | \
           {t.id for n in tree.body if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)}


def test_six_scripts():
    assert [p.name for p in SCRIPTS] == ["01_sft.py", "02_reward.py", "03_split.py", "04_dpo.py",
                                         "05_ppo.py", "06_eval.py"]


def test_one_plumbing_block_identical_in_every_stage_and_last():
    blocks = {p.name: split_script(p)[1] for p in SCRIPTS}
    for name, block in blocks.items():
        assert block == blocks["01_sft.py"], f"the plumbing block of {name} differs from 01_sft.py's"
    for p in SCRIPTS:
        src = p.read_text()
        assert src.count(MARK) == 1 and src.endswith(MAIN_GUARD + "\n    run_main(main)\n"), p.name
        assert src.count(MAIN_GUARD) == 2 and len(src.splitlines()) < 3000, p.name   # no stage copied into itself


def test_the_start_up_ctrl_c_handler_is_the_same_before_torch_in_every_stage():
    """The one piece repeated above the plumbing: it must run before `import torch`, so it cannot live there."""
    heads = {p.name: p.read_text().split("\nimport torch\n")[0] for p in SCRIPTS}
    guards = {name: head[head.rindex(MAIN_GUARD):] for name, head in heads.items()}
    assert len(set(guards.values())) == 1 and "signal.SIGINT" in guards["01_sft.py"], guards


def test_no_code_is_repeated_outside_the_plumbing_block():
    own = {p.name: top_level_names(split_script(p)[0]) - {"parse_args", "main"} for p in SCRIPTS}
    plumbing = top_level_names(split_script(SCRIPTS[0])[1])
    for name, names in own.items():
        assert not names & plumbing, f"{name} redefines plumbing helpers {sorted(names & plumbing)}"
        for other, other_names in own.items():
            if other != name:
                assert not names & other_names, f"{name} and {other} both define {sorted(names & other_names)}"


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: p.name)
def test_the_method_comes_first(path):
    """The first function after the imports is the stage's method, within the first quarter of the file."""
    lines = path.read_text().splitlines()
    first = next(i for i, l in enumerate(lines) if l.startswith(("def ", "@")))
    assert lines[first - 2].startswith("# --- the method") or lines[first - 3].startswith("# --- the method"), \
        (path.name, lines[first - 3:first])
    assert first < len(lines) / 4, (path.name, first, len(lines))


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
               "resource", "ctypes", "socket", "urllib", "matplotlib", "unicodedata", "warnings",
               "safetensors"}   # (a dependency of transformers: 06 reads stored weights with it)
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


def test_a_count_of_one_is_singular():
    """'01_sft: 1 steps', '06_eval: 1 policies', 'x 1 samples' in every report.md at the default setting."""
    from conftest import load_script
    counted = load_script("04_dpo").counted
    assert [counted(n, w) for n, w in ((1, "steps"), (2, "steps"), (0, "rows"), (1, "policies"), (3, "policies"),
                                       (1, "SFT steps"), ("?", "steps"))] == [
        "1 step", "2 steps", "0 rows", "1 policy", "3 policies", "1 SFT step", "? steps"]
