"""Issue 18: each numbered script copied alone into an empty folder (no other stage, no builtin_task.py)
runs on a model and data files named on its command line, as a user would run it in another project."""

import json
import shutil

import pytest

from conftest import ROOT, run_stage


def alone(tmp_path, script):
    """A fresh folder holding only `script`: nothing else of this project is importable from there."""
    folder = tmp_path / script.removesuffix(".py")
    folder.mkdir()
    shutil.copy(ROOT / script, folder)
    return folder


def run_alone(folder, script, *args, check=True):
    """The copy in `folder`, run from there with no PYTHONPATH to the project."""
    return run_stage(folder / script, *args, cwd=folder, check=check, env={"PYTHONPATH": ""})


def loads_as_hf(path, kind):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer
    cls = AutoModelForCausalLM if kind == "policy" else AutoModelForSequenceClassification
    model = cls.from_pretrained(path)
    AutoTokenizer.from_pretrained(path)
    return model


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Pairs in the prompt/chosen/rejected form, in HH-RLHF dialogues, and a file of prompts alone."""
    import builtin_task
    work = tmp_path_factory.mktemp("files")
    train, test = builtin_task.make_dataset(60, 8, seed=3)
    pairs = [{"prompt": r["prompt"][0]["content"], "chosen": r["chosen"], "rejected": r["rejected"]} for r in train]
    hh = [{"chosen": f"\n\nHuman: {p['prompt']}\n\nAssistant: {p['chosen']}",
           "rejected": f"\n\nHuman: {p['prompt']}\n\nAssistant: {p['rejected']}"} for p in pairs[:30]]
    prompts = [{"prompt": r["prompt"][0]["content"]} for r in test]
    for name, rows in (("pairs.jsonl", pairs), ("hh.jsonl", hh), ("prompts.jsonl", prompts)):
        (work / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return work


def test_every_stage_runs_alone_on_its_own_inputs(tmp_path, tiny_model_dir, files):
    m, pairs, prompts = str(tiny_model_dir), files / "pairs.jsonl", files / "prompts.jsonl"

    d = alone(tmp_path, "01_sft.py")
    run_alone(d, "01_sft.py", "--model", m, "--dataset", files / "hh.jsonl", "--test-dataset", pairs, "--max-steps", 2)
    loads_as_hf(d / "runs/default/01_sft", "policy")

    d = alone(tmp_path, "02_reward.py")
    run_alone(d, "02_reward.py", "--model", m, "--data", pairs, "--test-data", files / "hh.jsonl", "--max-steps", 2)
    rm = d / "runs/default/02_reward"
    assert loads_as_hf(rm, "reward").config.num_labels == 1

    d = alone(tmp_path, "03_split.py")
    run_alone(d, "03_split.py", "--reward", rm, "--data", pairs, "--easy-fraction", 0.5)
    easy = [json.loads(l) for l in open(d / "runs/default/03_split/easy.jsonl")]
    hard = [json.loads(l) for l in open(d / "runs/default/03_split/hard.jsonl")]
    assert easy and hard and (d / "runs/default/03_split/stats.json").exists()

    d = alone(tmp_path, "04_dpo.py")
    run_alone(d, "04_dpo.py", "--model", m, "--data", pairs, "--max-steps", 2)
    dpo = d / "runs/default/04_dpo"
    loads_as_hf(dpo, "policy")
    run_alone(d, "04_dpo.py", "--model", m, "--data", prompts, "--reward", rm, "--online", "--loss", "ipo",
              "--max-steps", 1, "--max-new-tokens", 6, "--out", d / "online")
    loads_as_hf(d / "online", "policy")

    d = alone(tmp_path, "05_ppo.py")
    run_alone(d, "05_ppo.py", "--policy", dpo, "--ref", dpo, "--reward", rm, "--data", prompts, "--steps", 1,
              "--max-new-tokens", 6)
    loads_as_hf(d / "runs/default/05_ppo", "policy")

    d = alone(tmp_path, "06_eval.py")
    run_alone(d, "06_eval.py", dpo, m, "--baseline", m, "--reward", rm, "--data", prompts,
              "--max-new-tokens", 6, "--bootstrap", 100)
    report = (d / "runs/default/06_eval/report.md").read_text()
    assert "04_dpo" in report and "RM score" in report


def test_the_built_in_task_alone_is_a_clear_error(tmp_path, tiny_model_dir):
    d = alone(tmp_path, "01_sft.py")
    proc = run_alone(d, "01_sft.py", "--model", tiny_model_dir, check=False)
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(err) == 1 and "builtin_task.py" in err[0], proc.stderr
    assert not (d / "runs").exists()
