"""End to end on the tiny model: run.sh 01 -> 06 with every baseline and ablation, the hand-over
between stages, and the errors a user meets (one line, exit code 2, nothing written)."""

import functools
from pathlib import Path
import json
import os
import shutil
import subprocess
import sys
import zlib

import pytest
import torch

from conftest import ROOT, build_tiny, load_script, run_in_process, run_stage


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory, tiny_model_dir):
    """`bash run.sh --compare` with the tiny budget, as a user would run it, in a scratch copy."""
    work = tmp_path_factory.mktemp("pipe")
    for f in list(ROOT.glob("0[1-6]_*.py")) + [ROOT / "builtin_task.py", ROOT / "run.sh"]:
        (work / f.name).write_bytes(f.read_bytes())
    env = dict(os.environ, HF_HUB_OFFLINE="1", TQDM_DISABLE="1", PYTHON=sys.executable)
    proc = subprocess.run(["bash", "run.sh", "--budget", "tiny", "--compare", "--ipo", "--run", "t", "--model",
                           str(tiny_model_dir)], cwd=work, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return work, work / "runs" / "t", proc.stdout


def test_run_sh_runs_every_stage_and_reports(pipeline):
    work, run, stdout = pipeline
    for d in ("01_sft", "02_reward", "03_split", "04_dpo", "05_ppo", "06_eval", "04_dpo_all", "04_dpo_hard",
              "05_ppo_vanilla", "05_ppo_sftref", "04_ipo", "04_ipo_online", "04_ipo_md", "04_nash_md_pg"):
        assert (run / d).is_dir(), d
    assert "expected wall time per stage" in stdout
    report = (run / "06_eval/report.md").read_text()
    results = json.load(open(run / "06_eval/results.json"))["results"]
    assert set(results) == {"01_sft", "04_dpo", "05_ppo", "04_dpo_all", "04_dpo_hard", "05_ppo_vanilla",
                            "05_ppo_sftref", "04_ipo", "04_ipo_online", "04_ipo_md", "04_nash_md_pg"}
    for name, res in results.items():
        assert f"| {name} |" in report
        families = [k for k in res if k.startswith("gold_")]          # the gold score per prompt family
        assert families
        for key in ["rm", "gold", "win_gold", "win_rm", "tie_gold", "tie_rm", "kl", "length", "eos", "refusal_harmful",
                    "refusal_harmless"] + families:
            few = res[key]["requests"] < 10   # (MIN_REQUESTS): no interval, in results.json as in report.md
            assert (res[key]["lo"], res[key]["hi"]) == (None, None) if few else \
                res[key]["lo"] <= res[key]["mean"] <= res[key]["hi"], (name, key)
        assert res["budget"] in report
    assert "ends with EOS" in report and "Gold score per prompt family" in report
    # what each policy is, read from its stage.json: the claims of --combine check it against the name
    assert {n: res["role"] for n, res in results.items()} == {
        "01_sft": "sft", "04_dpo": "dpo", "04_dpo_all": "dpo_all", "04_dpo_hard": None, "05_ppo": "mpo",
        "05_ppo_vanilla": "ppo", "05_ppo_sftref": "mpo_sftref", "04_ipo": None, "04_ipo_online": "ipo_online",
        "04_ipo_md": "ipo_md", "04_nash_md_pg": "nash_md_pg"}
    # run.sh --compare's rule: every offline DPO variant sees the same number of pairs, every online one the same
    # prompts and samples, every PPO variant the same rollouts; MPO's row shows the DPO stage it started from
    budget = {n: results[n]["budget"].split(",")[0] for n in results}
    assert len({budget[n] for n in ("04_dpo", "04_dpo_all", "04_dpo_hard", "04_ipo")}) == 1
    assert budget["04_ipo_online"] == budget["04_ipo_md"] == budget["04_nash_md_pg"]
    assert len({budget[n] for n in ("05_ppo", "05_ppo_vanilla", "05_ppo_sftref")}) == 1
    assert "3 steps x 8 pairs = 24 pairs" in results["04_dpo_all"]["budget"]
    # 03 splits every pair 01 wrote (01's files are normalised already; 03 re-reads none of them through normalise)
    stats = json.load(open(run / "03_split/stats.json"))
    assert stats["pairs"] == sum(1 for _ in open(run / "01_sft/data_train.jsonl")) == stats["easy"] + stats["hard"]
    assert "after 04_dpo (3 steps x 8 pairs = 24 pairs" in results["05_ppo"]["budget"]
    assert "after 01_sft (4 SFT steps)" in results["05_ppo_vanilla"]["budget"]
    # the SFT baseline against itself: every win is a tie, its KL to itself is zero
    assert results["01_sft"]["win_gold"]["mean"] == 0.5 and results["01_sft"]["kl"]["mean"] == 0.0
    assert results["01_sft"]["tie_gold"]["mean"] == results["01_sft"]["tie_rm"]["mean"] == 1.0
    assert "(ties 100%)" in report
    samples = [json.loads(l) for l in open(run / "06_eval/samples.jsonl")]
    n_prompts = json.load(open(run / "06_eval/results.json"))["n_prompts"]
    assert len(samples) == 11 * n_prompts and {"prompt", "response", "rm", "gold", "kl"} <= samples[0].keys()


def test_dpo_shuffles_and_the_hard_ablation_keeps_the_dataset_labels(pipeline, tmp_path):
    _, run, _ = pipeline
    dpo = load_script("04_dpo")
    assert json.load(open(run / "04_dpo/stage.json"))["data"]["order"] == "shuffled each epoch"
    hard_stage = json.load(open(run / "04_dpo_hard/stage.json"))
    assert hard_stage["data"]["labels"] == "dataset"
    written = [json.loads(l) for l in open(run / "03_split/hard.jsonl")]
    assert any(r["relabelled"] for r in written) and not all(r["relabelled"] for r in written)
    for labels in ("dataset", "rm"):
        args = dpo.parse_args(["--split", "hard", "--hard-labels", labels])
        rows, source = dpo.load_pairs(args, run / "01_sft", run / "03_split")
        assert source["labels"] == labels
        for got, r in zip(rows, written):
            flip = labels == "dataset" and r["relabelled"]
            assert (got["chosen"], got["rejected"]) == ((r["rejected"], r["chosen"]) if flip else (r["chosen"], r["rejected"]))
            assert got["gold_chosen"] == (r["gold_rejected"] if flip else r["gold_chosen"])
    assert dpo.parse_args([]).curriculum is False
    # a split made with --wrong-way hard relabels no pair: --hard-labels rm did nothing, and was recorded as 'rm'
    shutil.copytree(run / "03_split", tmp_path / "s")
    stats = json.load(open(tmp_path / "s/stats.json"))
    (tmp_path / "s/stats.json").write_text(json.dumps({**stats, "wrong_way": "hard"}))
    with pytest.raises(dpo.UserError, match=r"--hard-labels with .*s, split with --wrong-way hard: 03 relabelled no "
                                            r"pair, so its hard set holds the dataset's labels alone; leave it out"):
        dpo.load_pairs(dpo.parse_args(["--split", "hard", "--hard-labels", "rm"]), run / "01_sft", tmp_path / "s")
    assert dpo.load_pairs(dpo.parse_args(["--split", "hard"]), run / "01_sft", tmp_path / "s")[1]["labels"] == "dataset"


def test_dpo_reads_shuffled_batches_unless_curriculum(pipeline, tmp_path, monkeypatch):
    work, run, _ = pipeline
    dpo = load_script("04_dpo")
    shuffles, real = [], dpo.epoch_batches
    monkeypatch.setattr(dpo, "epoch_batches", lambda *a, **k: shuffles.append(k["shuffle"]) or real(*a, **k))
    monkeypatch.chdir(work)
    for i, extra in enumerate(([], ["--curriculum"])):
        dpo.run_main(dpo.main, ["--run", "t", "--max-steps", "1", "--out", str(tmp_path / str(i)), *extra])
    assert shuffles == [True, False]
    assert json.load(open(tmp_path / "1/stage.json"))["data"]["order"] == "stage 03's (descending |d|)"


def test_dpo_and_ppo_train_alike_on_03_s_sets_in_another_order(pipeline, tmp_path):
    """03 writes its sets in gap order, and bf16 gaps may differ in their last bits between two processes: the
    same pairs, reordered and with other gaps, give the same batches and so the same weights."""
    work, run, _ = pipeline
    other = tmp_path / "03_split"
    shutil.copytree(run / "03_split", other)
    for name in ("easy", "hard"):
        rows = [json.loads(l) for l in open(other / f"{name}.jsonl")][::-1]
        (other / f"{name}.jsonl").write_text("".join(json.dumps(dict(r, gap=r["gap"] * 1.001)) + "\n" for r in rows))
    stats = json.load(open(other / "stats.json"))          # as a 03 that wrote them would record them
    stats["files"] = {f: zlib.crc32((other / f).read_bytes()) for f in ("easy.jsonl", "hard.jsonl")}
    (other / "stats.json").write_text(json.dumps(stats))
    weights = {}
    for i, split in enumerate((run / "03_split", other)):
        run_in_process("04_dpo.py", "--run", "t", "--split-dir", split, "--max-steps", 2, "--batch-size", 4,
                       "--out", tmp_path / f"dpo{i}", cwd=work)
        run_in_process("05_ppo.py", "--run", "t", "--split-dir", split, "--steps", 1, "--rollout-batch", 4,
                       "--minibatch-size", 2, "--max-new-tokens", 8, "--out", tmp_path / f"ppo{i}", cwd=work)
        weights[i] = [(tmp_path / f"{s}{i}/model.safetensors").read_bytes() for s in ("dpo", "ppo")]
    assert weights[0] == weights[1]
    # two minibatches a rollout: step 2's pass under inference mode and the first update's own agree (the
    # pipeline's default one-minibatch runs share one pass, their first ratio 1 by construction)
    logs = [json.loads(l) for l in open(tmp_path / "ppo0/metrics.jsonl")]
    assert logs and all(l["ppo/first_ratio"] == pytest.approx(1.0, abs=1e-4) for l in logs)


def test_the_baseline_is_the_sft_policy_whatever_its_place(pipeline, tmp_path, capsys, monkeypatch, tiny_model_dir):
    import shutil
    work, run, _ = pipeline
    ev = load_script("06_eval")
    fast = ["--max-prompts", 3, "--max-new-tokens", 4, "--bootstrap", 100]
    monkeypatch.chdir(work)
    ev.run_main(ev.main, [str(a) for a in [run / "04_dpo", run / "01_sft", "--run", "t", "--out", tmp_path / "a"] + fast])
    res = json.load(open(tmp_path / "a/results.json"))
    assert res["baseline"] == str((run / "01_sft").resolve()) and list(res["results"])[0] == "01_sft"
    assert res["results"]["01_sft"]["win_gold"]["mean"] == 0.5 and res["results"]["01_sft"]["kl"]["mean"] == 0.0
    assert "baseline `01_sft`" in (tmp_path / "a/report.md").read_text()
    # a cap over the test set's size cuts none: refused (recorded, --combine took it for another protocol)
    with pytest.raises(ev.UserError, match=r"--max-prompts 12: .*data_test.jsonl has 12 test prompts, so it would "
                                           r"cut none; leave it out"):
        ev.main(ev.parse_args([str(a) for a in [run / "04_dpo", "--run", "t", "--out", tmp_path / "c",
                                                "--max-prompts", 12]]))
    # --baseline names another; two SFT policies without it are an error
    capsys.readouterr()
    ev.run_main(ev.main, [str(a) for a in [run / "01_sft", run / "04_dpo", "--baseline", run / "04_dpo", "--run", "t",
                                           "--out", tmp_path / "b"] + fast])
    res = json.load(open(tmp_path / "b/results.json"))
    assert list(res["results"])[0] == "04_dpo" and res["results"]["04_dpo"]["kl"]["mean"] == 0.0
    assert "01_sft neither started from the baseline" in capsys.readouterr().out   # SFT is DPO's start, not its heir
    # the model 01 began from (a directory here, a hub id alike) is every policy's ancestor: no such note
    ev.run_main(ev.main, [str(a) for a in [run / "04_dpo", run / "05_ppo", "--baseline", tiny_model_dir, "--run", "t",
                                           "--out", tmp_path / "f"] + fast])
    assert "neither started from" not in capsys.readouterr().out
    # no SFT among the policies: the one the RM was trained from; one SFT named twice is one SFT, and a policy
    # named again through a link keeps its first name
    (tmp_path / "dpolink").symlink_to(run / "04_dpo")
    ev.run_main(ev.main, [str(a) for a in [run / "04_dpo", run / "01_sft", work / "runs/t/../t/01_sft",
                                           tmp_path / "dpolink", "--run", "t", "--out", tmp_path / "d"] + fast])
    assert list(json.load(open(tmp_path / "d/results.json"))["results"]) == ["01_sft", "04_dpo"]
    ev.run_main(ev.main, [str(a) for a in [run / "04_dpo", "--run", "t", "--out", tmp_path / "e"] + fast])
    assert json.load(open(tmp_path / "e/results.json"))["baseline"] == str((run / "01_sft").resolve())
    shutil.copytree(run / "01_sft", tmp_path / "sft2")
    err = stage_error("06_eval.py", run / "01_sft", tmp_path / "sft2", "--run", "t", "--out", tmp_path / "c", *fast,
                      cwd=work, capsys=capsys, monkeypatch=monkeypatch)
    assert "several SFT policies" in err and "--baseline" in err and not (tmp_path / "c").exists()
    # a later policy that renders prompts otherwise (no chat template) is refused before any policy is sampled
    from transformers import AutoTokenizer
    shutil.copytree(run / "04_dpo", tmp_path / "plain")
    (tmp_path / "plain/chat_template.jinja").unlink(missing_ok=True)
    tok = AutoTokenizer.from_pretrained(tmp_path / "plain")
    tok.chat_template = None
    tok.save_pretrained(tmp_path / "plain")
    monkeypatch.setattr(ev, "sample_policy", lambda *a: pytest.fail("sampled before the policies were checked"))
    with pytest.raises(SystemExit):
        ev.run_main(ev.main, [str(a) for a in [run / "04_dpo", tmp_path / "plain", "--run", "t", "--out",
                                               tmp_path / "g"] + fast])
    assert (f"policy {tmp_path / 'plain'}: its chat template differs from the baseline's (runs/t/01_sft) (or one "
            f"has none)") in capsys.readouterr().err   # the SFT policy the RM was trained from


def test_the_run_computes_in_the_one_precision_run_sh_picked(pipeline):
    """run.sh resolves --precision auto once, with 01's probe, and passes it to every stage: one precision for
    the whole run, where a probe per stage could read otherwise on a loaded machine."""
    _, run, stdout = pipeline
    picked = stdout.split(", precision ")[1].split(",")[0]          # run.sh's first line
    assert picked in ("fp32", "bf16") and f"run.sh: precision: {picked}" in stdout   # and the probe's reason
    for d in ("01_sft", "02_reward", "04_dpo", "05_ppo", "04_ipo_online"):
        stage = json.load(open(run / d / "stage.json"))
        assert stage["args"]["precision"] == stage["precision"] == picked, d
        assert stage["precision_reason"].startswith("asked for"), d
    split = json.load(open(run / "03_split/stats.json"))
    assert split["args"]["precision"] == split["precision"] == picked
    assert json.load(open(run / "06_eval/results.json"))["precision"] == picked


def test_stage_outputs_are_plain_hugging_face_directories(pipeline):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification
    _, run, _ = pipeline
    for d in ("01_sft", "04_dpo", "05_ppo", "04_ipo_md"):
        assert AutoModelForCausalLM.from_pretrained(run / d) is not None
    assert AutoModelForSequenceClassification.from_pretrained(run / "02_reward").config.num_labels == 1
    for d in ("01_sft", "02_reward", "04_dpo", "05_ppo"):
        stage = json.load(open(run / d / "stage.json"))
        assert stage["dataset"]["name"] == "builtin" and "versions" in stage and "wall_time_s" in stage
        lines = [json.loads(l) for l in open(run / d / "metrics.jsonl")]
        assert any("perf/tokens_per_s" in l and "perf/peak_mem_mb" in l for l in lines)
    assert not list(run.glob(".*tmp*"))                  # no temporary directories left behind


def test_split_outputs_and_stats(pipeline):
    _, run, _ = pipeline
    stats = json.load(open(run / "03_split/stats.json"))
    easy = [json.loads(l) for l in open(run / "03_split/easy.jsonl")]
    hard = [json.loads(l) for l in open(run / "03_split/hard.jsonl")]
    assert len(easy) == stats["easy"] and len(hard) == stats["hard"] and easy and hard
    assert min(abs(r["gap"]) for r in easy) >= stats["threshold"] > max(abs(r["gap"]) for r in hard)
    assert [abs(r["gap"]) for r in easy] == sorted((abs(r["gap"]) for r in easy), reverse=True)  # curriculum order
    assert all(r["gap"] > 0 for r in easy)              # wrong-way pairs were relabelled
    assert {"easy", "hard", "all_before"} <= stats["label_noise"].keys()
    assert stats["heldout_buckets_abs"] and stats["heldout_buckets_quantile"]


def test_cached_reference_logps_equal_a_fresh_computation(pipeline):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    dpo = load_script("04_dpo")
    _, run, _ = pipeline
    cache = json.load(open(run / "04_dpo/ref_logps.json"))
    assert cache["aggregate"] == "sum"
    assert cache["train_order"] == "sorted by text_key"   # the order the seed shuffles, not 03's
    easy = sorted((json.loads(l) for l in open(run / "03_split/easy.jsonl")), key=dpo.text_key)
    tok = AutoTokenizer.from_pretrained(run / "01_sft")
    model = AutoModelForCausalLM.from_pretrained(run / "01_sft")
    ex = dpo.encode_rows(tok, easy, 256, 128, "easy")
    # recompute on the device and at the precision the stage used (CUDA and bf16 where a GPU ran it)
    stage = json.load(open(run / "04_dpo/stage.json"))
    device = torch.device(stage["device"])
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[stage["precision"]]
    model.to(device)
    fresh = dpo.reference_logps(model, ex, tok.pad_token_id, 5, device, dtype, False, "t")
    assert len(fresh) == len(cache["train"])
    assert torch.allclose(torch.tensor(fresh), torch.tensor(cache["train"]), atol=1e-3)
    # and they are not those of the trained policy
    trained = AutoModelForCausalLM.from_pretrained(run / "04_dpo")
    moved = dpo.reference_logps(trained.to(device), ex, tok.pad_token_id, 5, device, dtype, False, "t")
    assert not torch.allclose(torch.tensor(moved), torch.tensor(cache["train"]), atol=1e-3)


def test_ppo_logs_and_first_ratio(pipeline):
    _, run, _ = pipeline
    logs = [json.loads(l) for l in open(run / "05_ppo/metrics.jsonl")]
    for key in ("objective/scores", "objective/kl", "objective/rlhf_reward", "ppo/policy_loss", "ppo/value_loss",
                "ppo/clipfrac", "ppo/approx_kl", "objective/entropy", "response/length", "response/eos_rate",
                "time/generation_s", "time/training_s", "perf/tokens_per_s", "perf/peak_mem_mb"):
        assert key in logs[0], key
    assert all(l["ppo/first_ratio"] == pytest.approx(1.0, abs=1e-4) for l in logs)
    assert "samples" in logs[0]
    stage = json.load(open(run / "05_ppo_vanilla/stage.json"))
    assert stage["prompts"] == "all" and stage["ref"].endswith("01_sft")
    assert json.load(open(run / "05_ppo/stage.json"))["ref"].endswith("04_dpo")


def test_ppo_stops_its_epochs_early_only_where_one_is_left(pipeline, tmp_path, monkeypatch):
    """--target-approx-kl is checked after each epoch: 'ppo/early_stop' was true where it fired after the last
    one (nothing stopped). With one minibatch the first epoch's approx KL is 0 (the scoring pass), so a tiny
    target stops after the second epoch, and a third epoch is what is left to stop."""
    _, run, _ = pipeline
    ppo = load_script("05_ppo")
    updates, real = [], ppo.ppo_update

    def counted(*args, **kwargs):
        stats = real(*args, **kwargs)
        updates.append(1)
        return {**stats, "ppo/approx_kl": kl_of(len(updates))}
    monkeypatch.setattr(ppo, "ppo_update", counted)
    common = ["--policy", run / "04_dpo", "--reward", run / "02_reward", "--split-dir", run / "03_split", "--steps", 1,
              "--rollout-batch", 2, "--max-new-tokens", 4, "--ppo-epochs", 3, "--target-approx-kl", "0.5"]
    for name, kl_of, done, stopped in (("a", lambda i: [0.0, 1.0, 1.0][i - 1], 2, True),   # after the second
                                       ("b", lambda i: [0.0, 0.0, 1.0][i - 1], 3, False)):  # after the last: none
        updates.clear()
        ppo.run_main(ppo.main, [str(a) for a in common + ["--out", tmp_path / name]])
        record = json.loads((tmp_path / name / "metrics.jsonl").read_text().splitlines()[-1])
        assert (len(updates), record["ppo/early_stop"]) == (done, stopped)


def test_the_recorded_speed_is_that_of_training_not_of_the_held_out_pass(pipeline, tmp_path, monkeypatch,
                                                                          tiny_model_dir):
    """01 and 04 (offline and online) took their final tokens/s after the held-out evaluation, counting its
    time (02 and 05 did not): a one-step 04 run recorded 17,844 tokens/s against 31,949 for its only step.
    Here each evaluation takes 0.3 s more (a tiny step: ~0.03 s); the recorded speed stays the step's."""
    import time
    _, run, _ = pipeline
    sft, dpo = load_script("01_sft"), load_script("04_dpo")
    slow = lambda f: lambda *a, **k: (time.sleep(0.3), f(*a, **k))[1]
    monkeypatch.setattr(sft, "heldout_loss", slow(sft.heldout_loss))
    monkeypatch.setattr(dpo, "implicit_reward_accuracy", slow(dpo.implicit_reward_accuracy))
    monkeypatch.setattr(dpo, "online_eval", slow(dpo.online_eval))
    for stage, argv in ((sft, ["--model", tiny_model_dir, "--builtin-train-pairs", 16, "--builtin-test-prompts", 4]),
                        (dpo, ["--model", run / "01_sft", "--split-dir", run / "03_split"]),
                        (dpo, ["--model", run / "01_sft", "--split-dir", run / "03_split", "--online", "--loss", "ipo",
                               "--reward", run / "02_reward",
                               "--max-new-tokens", 4, "--batch-size", 2])):
        out = tmp_path / f"{stage.__name__}{len(argv)}"
        stage.run_main(stage.main, [str(a) for a in argv + ["--max-steps", 1, "--out", out]])
        steps = [json.loads(l) for l in open(out / "metrics.jsonl") if '"perf/tokens_per_s"' in l]
        recorded = json.load(open(out / "stage.json"))["final"]["perf/tokens_per_s"]
        assert recorded > 0.5 * steps[-1]["perf/tokens_per_s"], (out.name, recorded, steps[-1]["perf/tokens_per_s"])


def test_online_04_samples_each_distinct_prompt_once_an_epoch(pipeline, tmp_path, capsys):
    """Online, a pair set's repeated prompts were each sampled once per row and counted as prompts (57 'hard
    prompts' of 56); the record named the dataset's labels, which online training does not read."""
    _, run, _ = pipeline
    dpo = load_script("04_dpo")
    rows = [json.loads(l) for l in open(run / "03_split/hard.jsonl")][:3]
    rows.append({**rows[0], "chosen": rows[0]["chosen"] + " Really.", "relabelled": False})   # its prompt again
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    dpo.run_main(dpo.main, [str(a) for a in ["--model", run / "01_sft", "--reward", run / "02_reward", "--online",
                                             "--loss", "ipo", "--data", tmp_path / "pairs.jsonl", "--max-steps", 1,
                                             "--batch-size", 2, "--max-new-tokens", 4, "--out", tmp_path / "o"]])
    assert "4 rows of " in capsys.readouterr().out
    st = json.load(open(tmp_path / "o/stage.json"))
    assert st["final"]["n_pairs"] == 3 and st["final"]["epochs_seen"] == pytest.approx(2 / 3)
    assert st["data"]["labels"] is None


def test_online_04_evaluations_do_not_change_what_it_trains(pipeline, tmp_path):
    """The online evaluations drew from the training's random stream, so --eval-every changed the samples of
    the steps after it, and the weights."""
    _, run, _ = pipeline
    dpo = load_script("04_dpo")
    for every in (1, 2):
        dpo.run_main(dpo.main, [str(a) for a in ["--model", run / "01_sft", "--reward", run / "02_reward", "--online",
                                                 "--loss", "ipo", "--split-dir", run / "03_split", "--max-steps", 3,
                                                 "--batch-size", 2, "--max-new-tokens", 4, "--eval-every", every,
                                                 "--out", tmp_path / f"e{every}"]])
    assert (tmp_path / "e1/model.safetensors").read_bytes() == (tmp_path / "e2/model.safetensors").read_bytes()
    evaluated = lambda d: [l["step"] for l in map(json.loads, open(d / "metrics.jsonl")) if "online/win_rate_vs_ref" in l]
    assert evaluated(tmp_path / "e1") == [1, 2, 3] and evaluated(tmp_path / "e2") == [2, 3]


def test_ipo_with_summed_log_probs_as_in_the_papers(tmp_path, pipeline):
    _, run, _ = pipeline
    run_in_process("04_dpo.py", "--model", run / "01_sft", "--split-dir", run / "03_split", "--loss", "ipo",
                   "--ipo-aggregate", "sum", "--max-steps", 1, "--out", tmp_path / "ipo_sum", cwd=tmp_path)
    summed = json.load(open(tmp_path / "ipo_sum/ref_logps.json"))
    dpo_cache = json.load(open(run / "04_dpo/ref_logps.json"))              # DPO sums (Eq. 7)
    mean_cache = json.load(open(run / "04_ipo/ref_logps.json"))             # IPO's default: per-token mean
    assert summed["aggregate"] == "sum" and mean_cache["aggregate"] == "mean"
    assert torch.allclose(torch.tensor(summed["train"]), torch.tensor(dpo_cache["train"]), atol=1e-4)
    assert not torch.allclose(torch.tensor(summed["train"]), torch.tensor(mean_cache["train"]), atol=1e-2)


def test_online_ipo_logs(pipeline):
    _, run, _ = pipeline
    logs = [json.loads(l) for l in open(run / "04_ipo_md/metrics.jsonl")]
    steps = [l for l in logs if "online/win_rate_vs_ref" in l]
    assert steps and {"objective/kl", "perf/generation_share", "loss/train"} <= steps[0].keys()
    stage = json.load(open(run / "04_ipo_md/stage.json"))
    assert stage["args"]["mixture_beta"] == 0.125 and stage["args"]["online"]

    nash = [json.loads(l) for l in open(run / "04_nash_md_pg/metrics.jsonl")]
    step = next(l for l in nash if "nash/preference" in l)
    assert 0 < step["nash/preference"] < 1 and {"nash/advantage", "nash/sequence_log_ratio", "loss/train"} <= step.keys()
    stage = json.load(open(run / "04_nash_md_pg/stage.json"))
    assert stage["args"]["loss"] == "nash-md-pg" and stage["args"]["tau"] == 0.008   # the papers' tau, not IPO's


def test_resume_redoes_a_stage_whose_input_was_remade_and_refuses_other_flags(pipeline, tmp_path, tiny_model_dir):
    """run.sh --resume skipped a finished 04 and 05 after 03_split was rerun by hand (06's sweep table then
    called them MPO at the new split); and it took another --seed or budget for the stages still to come."""
    import re
    work, run, _ = pipeline
    body = re.search(r"^finished\(\) \{.*?^\}$", (ROOT / "run.sh").read_text(), re.S | re.M).group(0)

    def finished(d):
        proc = subprocess.run(["bash", "-c", body + '\nPY=$0 finished "$@"', sys.executable, str(d)], cwd=ROOT,
                              capture_output=True, text=True)
        return proc.returncode == 0, proc.stdout
    assert finished(run / "04_dpo") == (True, "") and finished(run / "05_ppo") == (True, "")
    split, dpo = tmp_path / "03_split", tmp_path / "04_dpo"   # 04 made from a split that is then remade
    shutil.copytree(run / "03_split", split)
    shutil.copytree(run / "04_dpo", dpo)
    st = json.load(open(dpo / "stage.json"))
    assert str(run.resolve() / "03_split") in st["marks"] and str(run.resolve() / "01_sft") in st["marks"]
    st["marks"] = {str(split.resolve()): st["marks"][str(run.resolve() / "03_split")]}
    (dpo / "stage.json").write_text(json.dumps(st))
    assert finished(dpo) == (True, "")
    record = json.load(open(split / "stats.json"))
    (split / "stats.json").write_text(json.dumps({**record, "wall_time_s": 1.0, "perf/pairs_per_s": 2.0}))
    assert finished(dpo) == (True, "")                                   # the same work again: no new input
    (split / "stats.json").write_text(json.dumps({**record, "easy": record["easy"] + 1}))   # remade
    done, said = finished(dpo)
    assert not done and said.strip() == f"run.sh: {dpo} was made from {split.resolve()} as it was then, remade since: redone (--resume)"
    assert not finished(tmp_path / "none")[0]
    st["marks"] = {"/elsewhere/03_split": st["marks"][str(split.resolve())]}   # a moved run: its own split, beside
    (dpo / "stage.json").write_text(json.dumps(st))
    assert finished(dpo) == (False, f"run.sh: {dpo} was made from {split} as it was then, remade since: redone "
                                    f"(--resume)\n")
    # what its record lists, or the weights, deleted since: 04 was skipped and 06 failed on it, again each --resume
    (dpo / "model.safetensors").unlink()
    assert finished(dpo) == (False, f"run.sh: {dpo} has lost model.safetensors since it was made: redone (--resume)\n")
    (split / "hard.jsonl").unlink()
    assert finished(split) == (False, f"run.sh: {split} has lost hard.jsonl since it was made: redone (--resume)\n")
    env = dict(os.environ, HF_HUB_OFFLINE="1", TQDM_DISABLE="1", PYTHON=sys.executable)
    model = ["--model", str(tiny_model_dir)]
    for flags, said in ((model + ["--seed", "7"], "--seed 7 (its 01_sft ran with 0)"),
                        (model + ["--budget", "cpu"], "--max-steps 30 (its 01_sft ran with 4)"),
                        ([], f"--model HuggingFaceTB/SmolLM2-135M-Instruct (its 01_sft ran with {tiny_model_dir})")):
        proc = subprocess.run(["bash", "run.sh", "--budget", "tiny", "--run", "t", "--resume", "--compare", "--ipo",
                               *flags], cwd=work, env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2 and proc.stderr.startswith("run.sh: --resume: runs/t was made with other "
                                                               "settings than this command's: ") and said in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 and "===" not in proc.stdout   # before any stage


def test_a_stage_marks_its_inputs_as_it_read_them(pipeline, tmp_path, monkeypatch):
    """Each trained stage marked its inputs' records as it saved its model: an input remade while the stage
    trained was taken for the one it trained on (06 said nothing, run.sh --resume skipped the stage). The
    marks are taken as the inputs are read; here each stage's input is remade during its training."""
    _, run, _ = pipeline
    for d in ("01_sft", "02_reward", "03_split", "04_dpo"):
        shutil.copytree(run / d, tmp_path / d)
    for stage, during, remade, argv in (
            ("02_reward", "bradley_terry_loss", "01_sft", ["--model", "01_sft", "--max-steps", "1"]),
            ("03_split", "score_pairs", "02_reward", ["--reward", "02_reward", "--easy-fraction", "0.5"]),
            ("04_dpo", "preference_loss", "03_split", ["--model", "01_sft", "--split-dir", "03_split", "--max-steps", "1"]),
            ("05_ppo", "gae", "04_dpo", ["--policy", "04_dpo", "--reward", "02_reward", "--split-dir", "03_split",
                                         "--steps", "1", "--rollout-batch", "2", "--max-new-tokens", "4"])):
        mod = load_script(stage)
        folder = tmp_path / remade
        record = mod.record_file(folder)
        text, before = record.read_text(), mod.record_mark(folder)
        real = getattr(mod, during)

        def remake(*args, real=real, record=record, **kwargs):   # the input is rerun while this stage trains
            record.write_text(json.dumps({**json.loads(record.read_text()), "seed": 123}))
            return real(*args, **kwargs)
        monkeypatch.setattr(mod, during, remake)
        monkeypatch.chdir(tmp_path)
        out = tmp_path / f"out_{stage}"
        mod.run_main(mod.main, argv + ["--out", str(out)])
        marks = json.loads(mod.record_file(out).read_text())["marks"]
        assert marks[str(folder.resolve())] == before != mod.record_mark(folder), stage
        record.write_text(text)   # as it was, for the stages after


def test_a_sweep_point_is_mpo_s_own_by_its_setting_or_its_pairs(pipeline, tmp_path):
    """run.sh's same_split: a point is 03_split's where 03 ran with its setting, or where the split made for it
    holds the same pairs in each set, whatever the order and the last digits of the gaps (bf16 on a loaded
    CPU scores differently in two processes)."""
    import re
    _, run, _ = pipeline
    body = re.search(r"^same_split\(\) \{.*?^\}$", (ROOT / "run.sh").read_text(), re.S | re.M).group(0)

    def same_split(*args):
        return subprocess.run(["bash", "-c", body + '\nPY=$0 same_split "$@"', sys.executable, *map(str, args)],
                              cwd=ROOT, capture_output=True, text=True).returncode == 0   # run.sh's own folder

    own, threshold = run / "03_split", json.load(open(run / "03_split/stats.json"))["threshold"]
    assert same_split(own, "--easy-fraction", "0.5")                    # run.sh's tiny budget splits at 0.5
    assert not same_split(own, "--easy-fraction", "0.3")
    assert not same_split(own, "--threshold", threshold)                # a quantile split is no threshold's
    assert not same_split(tmp_path / "none", "--easy-fraction", "0.5")
    made = tmp_path / "made"
    shutil.copytree(own, made)
    easy = [json.loads(l) for l in open(made / "easy.jsonl")]
    for r in easy:
        r["gap"] += 1e-4
    (made / "easy.jsonl").write_text("".join(json.dumps(r) + "\n" for r in easy[::-1]))
    assert same_split(own, made)
    with open(made / "hard.jsonl", "a") as f:                          # one pair moved to the hard set
        f.write(json.dumps(easy[0]) + "\n")
    (made / "easy.jsonl").write_text("".join(json.dumps(r) + "\n" for r in easy[1:]))
    assert not same_split(own, made)
    # the same pairs, counted: a pair twice in one set is not the same split as once
    twice = tmp_path / "twice"
    shutil.copytree(own, twice)
    with open(twice / "easy.jsonl", "a") as f:
        f.write(json.dumps(easy[0]) + "\n")
    assert not same_split(own, twice)
    # 03 run by hand with other lengths than those its point would inherit from 01 is not the point's
    sft = tmp_path / "sft"
    sft.mkdir()
    stage = json.load(open(run / "01_sft/stage.json"))
    stage["args"]["max_response_len"] -= 1
    (sft / "stage.json").write_text(json.dumps(stage))
    other = tmp_path / "other"
    shutil.copytree(own, other)
    st = json.load(open(other / "stats.json"))
    (other / "stats.json").write_text(json.dumps({**st, "sft": str(sft)}))
    assert not same_split(other, "--easy-fraction", "0.5")


def test_threshold_sweep_and_resume(pipeline, tmp_path, tiny_model_dir):
    """run.sh --sweep-easy-fraction on a finished run with --resume: the finished stages are skipped, MPO is
    trained again at each new split (a split equal to 03_split's reuses MPO's own), 06 tabulates the sweep."""
    import shutil
    work, _, _ = pipeline
    copy = tmp_path / "w"
    shutil.copytree(work, copy)
    env = dict(os.environ, HF_HUB_OFFLINE="1", TQDM_DISABLE="1", PYTHON=sys.executable)
    precision = json.load(open(copy / "runs/t/03_split/stats.json"))["precision"]   # the split it must match
    command = ["bash", "run.sh", "--budget", "tiny", "--run", "t", "--model", str(tiny_model_dir), "--resume",
               "--sweep-easy-fraction", "0.3,0.5", "--precision", precision]
    # without the --compare --ipo that made the run, 06 would replace an evaluation of more policies: refused
    proc = subprocess.run(command, cwd=copy, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2 and proc.stderr.strip().startswith(
        "run.sh: --resume: runs/t/06_eval also evaluated 04_dpo_all, 04_dpo_hard, 04_ipo,"), proc.stderr[-2000:]
    assert len(proc.stderr.strip().splitlines()) == 1 and "which this command would not" in proc.stderr
    assert "===" not in proc.stdout and not (copy / "runs/t/03_split_e0.3").exists()   # refused before any stage
    proc = subprocess.run(command + ["--compare", "--ipo"], cwd=copy, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "remade since" not in proc.stdout, [l for l in proc.stdout.splitlines() if "remade" in l]   # none redone
    for d in ("01_sft", "02_reward", "03_split", "04_dpo", "05_ppo"):
        assert f"runs/t/{d} is finished; skipped (--resume)" in proc.stdout
    assert "--easy-fraction 0.5 splits as 03_split did" in proc.stdout and not (copy / "runs/t/04_dpo_e0.5").exists()
    res = json.load(open(copy / "runs/t/06_eval/results.json"))
    sweep = res["sweep"]
    assert [r["point"] for r in sweep] == ["easy fraction 0.5", "easy fraction 0.3"]     # ascending threshold
    assert sweep[0]["threshold"] < sweep[1]["threshold"] and sweep[0]["easy"] > sweep[1]["easy"]
    assert (sweep[0]["dpo"], sweep[0]["mpo"]) == ("04_dpo", "05_ppo")
    assert (sweep[1]["dpo"], sweep[1]["mpo"]) == ("04_dpo_e0.3", "05_ppo_e0.3")
    stats = json.load(open(copy / "runs/t/03_split_e0.3/stats.json"))
    assert sweep[1]["easy"] == stats["easy"] and sweep[1]["easy_label_noise"] == stats["label_noise"]["easy"]
    ppo_stage = json.load(open(copy / "runs/t/05_ppo_e0.3/stage.json"))
    assert ppo_stage["split"] == str((copy / "runs/t/03_split_e0.3").resolve())
    assert ppo_stage["policy_init"] == ppo_stage["ref"] == str((copy / "runs/t/04_dpo_e0.3").resolve())
    report = (copy / "runs/t/06_eval/report.md").read_text()
    assert "## Threshold sweep" in report and "| easy fraction 0.3 |" in report
    # which policy is which, from stage.json: the ablations and the IPO family are no sweep points
    ev = load_script("06_eval")
    roles = {d.name: ev.sweep_role(d) for d in (copy / "runs/t").iterdir() if d.name.startswith(("04_", "05_"))}
    assert {n for n, r in roles.items() if r} == {"04_dpo", "05_ppo", "04_dpo_e0.3", "05_ppo_e0.3"}
    # a moved run: the recorded paths are gone, the directories beside the policies stand in
    moved = tmp_path / "moved"
    (copy / "runs/t").rename(moved)
    results = {n: {"dir": str(moved / n)} for n in ("01_sft", "04_dpo", "05_ppo", "04_dpo_e0.3", "05_ppo_e0.3",
                                                    "05_ppo_sftref", "04_dpo_all")}
    rows = ev.threshold_sweep(results, moved / "02_reward")
    assert [(r["dpo"], r["mpo"], Path(r["split"]).parent) for r in rows] == [
        ("04_dpo", "05_ppo", moved), ("04_dpo_e0.3", "05_ppo_e0.3", moved)]
    assert ev.threshold_sweep(results, tmp_path / "another_rm") == []   # splits of another RM are no sweep
    (moved).rename(copy / "runs/t")
    # --combine keeps the points every run has; one run named twice is refused, and so is one training
    # evaluated twice (another 06 --seed: sampling noise, no spread over training seeds)
    shutil.copytree(copy / "runs/t/06_eval", tmp_path / "t2/06_eval")
    rerun = json.load(open(tmp_path / "t2/06_eval/results.json"))
    rerun["results"]["01_sft"]["time_s"] += 1
    json.dump(rerun, open(tmp_path / "t2/06_eval/results.json", "w"))
    with pytest.raises(ev.UserError, match="is named twice"):
        ev.main(ev.parse_args(["--combine", str(copy / "runs/t"), str(copy / "runs/t/06_eval"), "--out", str(tmp_path / "c")]))
    with pytest.raises(ev.UserError, match=r"evaluate the same trained policy \(.*/runs/t/04_dpo, trained with seed 0\)"):
        ev.main(ev.parse_args(["--combine", str(copy / "runs/t"), str(tmp_path / "t2"), "--out", str(tmp_path / "c")]))
    for v in rerun["results"].values():   # as if trained elsewhere with the same seed: a note says so
        v["trained_in"] = str(tmp_path / "elsewhere" / Path(v["dir"]).name)
    json.dump(rerun, open(tmp_path / "t2/06_eval/results.json", "w"))
    ev.main(ev.parse_args(["--combine", str(copy / "runs/t"), str(tmp_path / "t2"), "--out", str(tmp_path / "c")]))
    assert "trained with the same seeds (0, 0)" in (tmp_path / "c/report.md").read_text()
    combined = json.load(open(tmp_path / "c/results.json"))["sweep"]
    assert [p["point"] for p in combined] == ["easy fraction 0.5", "easy fraction 0.3"]
    assert combined[1]["mpo"]["gold"]["std"] == 0.0 and combined[1]["mpo"]["name"] == "05_ppo_e0.3"
    assert "## Threshold sweep" in (tmp_path / "c/report.md").read_text()


# ---------------------------------------------------------------------------- errors

def one_line_error(proc, *needles):
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1, proc.stderr
    for n in needles:
        assert n in err[0], err[0]


def stage_error(script, *argv, cwd, capsys, monkeypatch):
    """Run a stage in this process, as its command line would (run_main), and return its one error line:
    the same code path as a subprocess without a second interpreter's start-up."""
    from transformers.utils import logging as hf_logging
    mod = load_script(script.removesuffix(".py"))
    monkeypatch.chdir(cwd)
    # progress bars off, as TQDM_DISABLE does for a subprocess (tqdm reads it only at import)
    monkeypatch.setattr(mod, "tqdm", functools.partial(mod.tqdm, disable=True))
    hf_logging.disable_progress_bar()
    capsys.readouterr()
    try:
        with pytest.raises(SystemExit) as exit_:
            mod.run_main(mod.main, [str(a) for a in argv])
    finally:
        hf_logging.enable_progress_bar()
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and len(err) == 1, err
    return err[0]


def test_errors_are_one_line_and_write_nothing(tmp_path, tiny_model_dir, pipeline, capsys, monkeypatch):
    work, run, _ = pipeline
    m = str(tiny_model_dir)
    # the command line itself, in a subprocess: one line on stderr, exit code 2
    one_line_error(run_stage("01_sft.py", "--lr", "abc", cwd=tmp_path, check=False), "--lr", "invalid float")
    one_line_error(run_stage("06_eval.py", run / "02_reward", "--run", "t", "--out", tmp_path / "e", cwd=work,
                             check=False), "02_reward", "expected a causal LM")   # a reward model is no policy

    def error(script, *argv, cwd=tmp_path):
        return stage_error(script, *argv, cwd=cwd, capsys=capsys, monkeypatch=monkeypatch)
    assert "nope.jsonl: file not found" in error("01_sft.py", "--model", m, "--dataset", "nope.jsonl", "--run", "x")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n{"prompt": "p", "rejected": "b"}\n')
    assert "row 2 is missing ['chosen']" in error("01_sft.py", "--model", m, "--dataset", bad, "--run", "x")
    empty = tmp_path / "empty.jsonl"
    empty.write_text('{"prompt": "p", "chosen": "", "rejected": "b"}\n')
    assert "every row was skipped; skipped 1 (empty response; first: row 1)" in error(
        "01_sft.py", "--model", m, "--dataset", empty, "--run", "x")
    err = error("01_sft.py", "--model", m, "--builtin-test-prompts", 5000, "--run", "x")
    assert "error: --builtin-test-prompts 5000: " in err and "ran out of distinct test prompts" in err
    err = error("01_sft.py", "--model", tmp_path / "nomodel", "--run", "x", "--max-steps", 1,
                "--builtin-train-pairs", 20, "--builtin-test-prompts", 5)
    assert "nomodel" in err and "not found" in err
    assert "python 01_sft.py" in error("02_reward.py", "--run", "x")
    assert "python 04_dpo.py" in error("05_ppo.py", "--run", "x")
    assert "--hard-labels is for --split hard" in error("04_dpo.py", "--run", "t", "--hard-labels", "rm", cwd=work)
    # a flag that would do nothing is refused, not ignored
    assert "--reward is for --online" in error("04_dpo.py", "--run", "t", "--reward", run / "02_reward", cwd=work)
    assert "pass --online too" in error("04_dpo.py", "--run", "t", "--loss", "nash-md-pg", cwd=work)
    assert "--data and --split-dir / --prompts" in error("05_ppo.py", "--run", "t", "--data", bad, "--prompts", "all")
    assert "--test-dataset is for a local --dataset" in error("01_sft.py", "--model", m, "--test-dataset", bad)
    assert "--split-dir with --prompts all" in error("05_ppo.py", "--run", "t", "--prompts", "all", "--split-dir", bad)
    assert "--adaptive-kl with --kl-coef 0" in error("05_ppo.py", "--run", "t", "--adaptive-kl", "--kl-coef", 0)
    for seed in (-1, 2**31, 10**20, "1.5"):   # torch's and our derived seeds would overflow deep inside
        assert f"argument --seed: '{seed}': expected an integer in [0, 2**31)" in error("01_sft.py", "--seed", seed)
    assert not (tmp_path / "runs").exists()
    # an existing output is not overwritten without --overwrite
    assert "--overwrite" in error("03_split.py", "--reward", run / "02_reward", "--out", run / "03_split")
    # a threshold that empties a set prints the gap quantiles
    err = error("03_split.py", "--reward", run / "02_reward", "--out", tmp_path / "s", "--threshold", 1e9)
    assert "easy set empty" in err and "q50=" in err
    same = tmp_path / "same.jsonl"   # every gap equal: no quantile splits them (not "pick --threshold")
    same.write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n' * 12)
    err = error("03_split.py", "--reward", run / "02_reward", "--data", same, "--out", tmp_path / "s",
                "--easy-fraction", 0.5)
    assert "--easy-fraction 0.5: the gaps at that quantile are tied" in err and "--threshold" not in err
    # a directory of the wrong kind: a reward model loaded as a policy would get a fresh random LM head
    err = error("05_ppo.py", "--run", "t", "--policy", run / "02_reward", "--out", tmp_path / "p", cwd=work)
    assert "--policy" in err and "expected a causal LM" in err
    # a reference model with another tokenizer would read the policy's token ids as other words
    other = tmp_path / "other_vocab"
    build_tiny(other, vocab_size=300)
    err = error("05_ppo.py", "--run", "t", "--ref", other, "--out", tmp_path / "p", cwd=work)
    assert f"--ref {other}: its tokenizer differs from the policy's" in err
    err = error("03_split.py", "--reward", run / "01_sft", "--out", tmp_path / "s")
    assert "--reward" in err and "expected a reward model" in err
    assert "no config.json" in error("06_eval.py", tmp_path, "--run", "t", "--out", tmp_path / "e", cwd=work)
    assert not (tmp_path / "e").exists() and not (tmp_path / "p").exists() and not (tmp_path / "s").exists()


def test_models_whose_token_ids_or_eos_differ_are_refused_before_any_sampling(tmp_path, pipeline, capsys,
                                                                                monkeypatch):
    """A policy with an added pad token has a row the others lack (its samples and padding were an
    IndexError inside torch); a model whose EOS differs would read on past where the other's responses end."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    work, run, _ = pipeline
    padded, eos = tmp_path / "padded", tmp_path / "eos"
    model, tok = AutoModelForCausalLM.from_pretrained(run / "04_dpo"), AutoTokenizer.from_pretrained(run / "04_dpo")
    rows = model.config.vocab_size
    tok.add_special_tokens({"pad_token": "<pad>"})
    model.resize_token_embeddings(len(tok))
    model.save_pretrained(padded)
    tok.save_pretrained(padded)
    shutil.copytree(run / "04_dpo", eos)
    tok = AutoTokenizer.from_pretrained(eos)
    tok.eos_token = "<unk>"
    tok.save_pretrained(eos)
    fast = ["--max-prompts", 2, "--samples-per-prompt", 1, "--bootstrap", 100]
    for script, argv, want in [
            ("04_dpo.py", ["--online", "--model", padded], f"--reward runs/t/02_reward: its embedding has {rows} "
                                                           f"rows, but it would read token ids up to {rows} from "
                                                           f"the policy's samples"),
            ("05_ppo.py", ["--policy", padded], f"--reward runs/t/02_reward: its embedding has {rows} rows, but it "
                                                f"would read token ids up to {rows} from the policy's rollouts"),
            ("05_ppo.py", ["--ref", eos], f"--ref {eos}: its EOS token ('<unk>', id 0) differs from the policy's "
                                          f"('<|im_end|>', id 2)"),
            ("06_eval.py", [run / "04_dpo", padded, *fast], f"--reward runs/t/02_reward: its embedding has "
                                                            f"{rows} rows, but it would read token ids up to {rows} "
                                                            f"from policy {padded}'s samples"),
            ("06_eval.py", [run / "04_dpo", eos, *fast], f"policy {eos}: its EOS token ('<unk>', id 0) differs")]:
        err = stage_error(script, *argv, "--run", "t", "--out", tmp_path / "out", cwd=work, capsys=capsys,
                          monkeypatch=monkeypatch)
        assert want in err, err
        assert not (tmp_path / "out").exists()


def test_nan_loss_stops_dpo_and_writes_nothing(tmp_path, pipeline, monkeypatch, capsys):
    _, run, _ = pipeline
    dpo = load_script("04_dpo")
    real = dpo.preference_loss

    def diverged(*args, **kwargs):                                     # a loss that has diverged
        losses, *rest = real(*args, **kwargs)
        return (losses * float("nan"), *rest)
    monkeypatch.setattr(dpo, "preference_loss", diverged)
    out = tmp_path / "nan"
    with pytest.raises(SystemExit) as e:
        dpo.run_main(dpo.main, ["--model", str(run / "01_sft"), "--split-dir", str(run / "03_split"), "--out", str(out),
                                "--max-steps", "5"])
    err = capsys.readouterr().err.strip().splitlines()[-1]             # after the progress bars
    assert e.value.code == 2 and ": error: loss is nan at step 1, on pairs " in err
    assert err.endswith("(0-based) of the easy set; nothing was written")
    assert not out.exists() and not list(tmp_path.glob(".nan*"))


def test_a_killed_stage_leaves_nothing_behind(tmp_path, tiny_model_dir):
    """A stage writes its output only once it has finished (into a temporary directory renamed into
    place): killed while training, it leaves nothing; a temporary directory left by a kill while saving
    is removed by the next run."""
    import signal
    env = dict(os.environ, HF_HUB_OFFLINE="1", TQDM_DISABLE="1")
    args = [sys.executable, str(ROOT / "01_sft.py"), "--model", str(tiny_model_dir), "--run", "k",
            "--builtin-train-pairs", "50", "--builtin-test-prompts", "5"]
    proc = subprocess.Popen(args + ["--max-steps", "100000"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    for line in proc.stdout:                                         # training has started
        if line.startswith("held-out loss before"):
            break
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) != 0
    assert not (tmp_path / "runs/k").exists() or not list((tmp_path / "runs/k").iterdir())
    stale = tmp_path / "runs/k/.01_sft.tmp"
    stale.mkdir(parents=True)
    (stale / "model.safetensors").write_text("half-written")
    subprocess.run(args + ["--max-steps", "1"], cwd=tmp_path, env=env, check=True, capture_output=True)
    assert sorted(p.name for p in (tmp_path / "runs/k").iterdir()) == ["01_sft"]


def test_run_sh_help_and_unknown_option():
    proc = subprocess.run(["bash", str(ROOT / "run.sh"), "--help"], capture_output=True, text=True)
    lines = proc.stdout.strip().splitlines()
    assert proc.returncode == 0 and all(l.startswith("#") for l in lines)      # the comment block only
    assert any("--compare --ipo" in l for l in lines)
    proc = subprocess.run(["bash", str(ROOT / "run.sh"), "--bogus"], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.strip() == "run.sh: unknown option --bogus (see bash run.sh --help)"
    for argv, needle in ((["--sweep-threshold", "1,x"], "'x' is not a plain decimal of 0 or more"),
                         (["--run", "../escape"], "--run '../escape': expected a plain name"),
                         (["--run", "a/b"], "--run 'a/b': expected a plain name"),
                         (["--run", "-x"], "--run '-x': expected a plain name"),   # 01 would read -x as a flag
                         (["--sweep-threshold", "1", "--sweep-easy-fraction", "0.5"], "pass one of"),
                         (["--sweep-threshold", ","], "needs a list"), (["--seed"], "--seed needs a value"),
                         (["--sweep-easy-fraction", "0.5,1.5"], "1.5 is not in (0, 1)"),
                         (["--resume", "--overwrite"], "pass one of --resume (keep the finished stages) and --overwrite"),
                         (["--", "--dataset", "pairs.jsonl"], "--dataset after -- would reach 01_sft.py alone"),
                         (["--precision", "fp8"], "--precision must be auto, fp32, bf16 or fp16"),
                         (["--", "--precision", "fp32"], "--precision after -- would reach 01_sft.py alone"),
                         (["--", "-h"], "-h after -- would print 01_sft.py's help and go on to 02 without it"),
                         (["--", "--max-train-pairs", "9", "--run=x"], "--run after -- would reach 01_sft.py alone")):
        proc = subprocess.run(["bash", str(ROOT / "run.sh"), *argv], capture_output=True, text=True)
        assert proc.returncode == 2 and needle in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, argv


def test_run_sh_after_a_refusal_of_its_first_stage_says_to_rerun_the_same_command(tmp_path):
    """No stage finished, so --resume would have nothing to go on from."""
    proc = subprocess.run(["bash", str(ROOT / "run.sh"), "--budget", "tiny", "--run", "s", "--seed", "abc"],
                          cwd=tmp_path, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 2 and "01_sft.py: error: argument --seed: 'abc'" in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].endswith(
        "rerun with the same command once what the stage above names is mended (no stage had finished)")
    assert not (ROOT / "runs/s").exists()   # the runs go beside run.sh


def test_run_sh_refuses_an_existing_run_without_resume_or_overwrite(pipeline):
    work, run, _ = pipeline
    before = sorted((p.name, p.stat().st_mtime_ns) for p in run.iterdir())
    proc = subprocess.run(["bash", "run.sh", "--budget", "tiny", "--run", "t"], cwd=work, capture_output=True,
                          text=True)
    assert proc.returncode == 2 and proc.stderr.strip() == ("run.sh: runs/t exists; pass --resume to finish it, "
                                                            "--overwrite to redo it, or --run NAME for a new run")
    assert sorted((p.name, p.stat().st_mtime_ns) for p in run.iterdir()) == before


def test_run_sh_goes_on_where_the_precision_probe_fails(tmp_path):
    """A precision probe that cannot run (as with --device cuda where there is no CUDA) leaves each stage its
    own pick: 01 gets --precision auto and names the cause in its one line; run.sh does not stop in silence."""
    shutil.copy(ROOT / "run.sh", tmp_path)
    fake = tmp_path / "fake_python"
    fake.write_text('#!/bin/bash\n[ "$1" = -c ] && exit 1\necho "$@" >> calls.log\n'
                    'echo "01_sft: --device cuda: CUDA is not available" >&2; exit 2\n')
    fake.chmod(0o755)
    proc = subprocess.run(["bash", "run.sh", "--budget", "tiny", "--device", "cuda", "--run", "t"], cwd=tmp_path,
                          capture_output=True, text=True, env={**os.environ, "PYTHON": str(fake)})
    assert proc.returncode == 2 and "CUDA is not available" in proc.stderr and "precision auto" in proc.stdout
    assert "run.sh: stopped (exit 2; the stage above says why): rerun with the same command" in proc.stderr
    call, = (tmp_path / "calls.log").read_text().splitlines()
    assert call.startswith("01_sft.py") and "--precision auto" in call
    # --resume of a run that has nothing yet (a mistyped name?) starts it, and says so
    proc = subprocess.run(["bash", "run.sh", "--budget", "tiny", "--device", "cpu", "--run", "typo", "--resume"],
                          cwd=tmp_path, capture_output=True, text=True, env={**os.environ, "PYTHON": str(fake)})
    assert "run.sh: note: runs/typo has no stages yet; --resume starts it from 01" in proc.stdout


def test_run_sh_overwrite_removes_the_earlier_runs_stages_it_did_not_redo(tmp_path):
    """--overwrite redoes a run in place: stage outputs of an earlier --compare that this run does not make
    are removed before 06 (they were trained from the stages it replaced); a user's own folder is kept. The
    stages are stood in for by a fake python that writes a stage.json, so only run.sh itself is tested."""
    shutil.copy(ROOT / "run.sh", tmp_path)
    fake = tmp_path / "fake_python"
    fake.write_text(f'#!/bin/bash\n[ "$1" = -c ] && [[ "$2" == *json.load* ]] && exec {sys.executable} "$@"\n'
                    '[ "$1" = -c ] && exit 0\n[ "$1" = "$FAIL_AT" ] && exit 1\n'
                    'echo "$@" >> calls.log; s=$1; out=""; run=default; prev=""\n'
                    'for a; do [ "$prev" = --out ] && out=$a; [ "$prev" = --run ] && run=$a; prev=$a; done\n'
                    'out=${out:-runs/$run/${s%.py}}; mkdir -p "$out"; echo "{}" > "$out/stage.json"\n')
    fake.chmod(0o755)
    run = tmp_path / "runs" / "t"
    for d in ("01_sft", "04_dpo_all", "05_ppo_vanilla", "my_notes"):
        (run / d).mkdir(parents=True)
    for d in ("01_sft", "04_dpo_all", "05_ppo_vanilla"):
        (run / d / "stage.json").write_text("{}")
    proc = subprocess.run(["bash", "run.sh", "--budget", "tiny", "--device", "cpu", "--run", "t", "--overwrite"],
                          cwd=tmp_path, capture_output=True, text=True, env={**os.environ, "PYTHON": str(fake)})
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in run.iterdir()) == ["01_sft", "02_reward", "03_split", "04_dpo", "05_ppo",
                                                     "06_eval", "my_notes"]
    assert "run.sh: removed runs/t/04_dpo_all, an earlier run's stage" in proc.stdout
    # with --compare the same folders are this run's own: kept
    proc = subprocess.run(["bash", "run.sh", "--budget", "tiny", "--device", "cpu", "--run", "t", "--overwrite",
                           "--compare"], cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, "PYTHON": str(fake)})
    assert proc.returncode == 0 and "removed" not in proc.stdout
    assert {"04_dpo_all", "04_dpo_hard", "05_ppo_vanilla", "05_ppo_sftref"} < {p.name for p in run.iterdir()}
    # an --overwrite that stops after 01 leaves a run of two runs' stages: --resume would take it as finished
    argv = ["bash", "run.sh", "--budget", "tiny", "--device", "cpu", "--run", "t"]
    proc = subprocess.run(argv + ["--overwrite"], cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, "PYTHON": str(fake), "FAIL_AT": "04_dpo.py"})
    assert proc.returncode != 0 and (run / ".overwrite-unfinished").exists()
    assert "run.sh: stopped (exit 1; the stage above says why): rerun with --overwrite" in proc.stderr
    proc = subprocess.run(argv + ["--resume"], cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, "PYTHON": str(fake)})
    assert proc.returncode == 2 and "was being redone with --overwrite, which did not finish" in proc.stderr
    proc = subprocess.run(argv + ["--overwrite"], cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, "PYTHON": str(fake)})
    assert proc.returncode == 0 and not (run / ".overwrite-unfinished").exists()
    # paths are the caller's, wherever run.sh lies; --precision reaches every stage
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere/pairs.jsonl").write_text("{}\n")
    (tmp_path / "calls.log").unlink()
    proc = subprocess.run(["bash", str(tmp_path / "run.sh"), "--budget", "tiny", "--device", "cpu", "--run", "p",
                           "--dataset", "pairs.jsonl", "--precision", "fp32"], cwd=tmp_path / "elsewhere",
                          capture_output=True, text=True, env={**os.environ, "PYTHON": str(fake)})
    calls = [c for c in (tmp_path / "calls.log").read_text().splitlines() if not c.startswith("-c")]
    assert proc.returncode == 0 and "precision fp32" in proc.stdout and len(calls) == 6
    assert all("--precision fp32" in c for c in calls)
    assert f"--dataset {tmp_path}/elsewhere/pairs.jsonl" in calls[0]
    # a resumed run keeps the precision its 01 ran in, without a new probe
    (tmp_path / "runs/p/01_sft/stage.json").write_text('{"precision": "fp32"}')
    (tmp_path / "calls.log").unlink()
    proc = subprocess.run(["bash", "run.sh", "--budget", "tiny", "--device", "cpu", "--run", "p", "--resume"],
                          cwd=tmp_path, capture_output=True, text=True, env={**os.environ, "PYTHON": str(fake)})
    calls = (tmp_path / "calls.log").read_text().splitlines()
    assert proc.returncode == 0 and "precision fp32" in proc.stdout and calls[-1].startswith("06_eval.py")
    assert "--precision fp32" in calls[-1]


def test_run_sh_interrupted_itself_says_so(tmp_path):
    """Ctrl-C sent to run.sh alone (kill -INT): bash waits for the stage, which finishes and saves; run.sh then
    said 'the stage above says why', and the stage above had said only that it finished."""
    import signal
    import time
    shutil.copy(ROOT / "run.sh", tmp_path)
    fake = tmp_path / "fake_python"   # a stage that takes two seconds and saves; run.sh's own checks pass
    fake.write_text(f'#!/bin/bash\n[ "$1" = -c ] && [[ "$2" == *json.load* ]] && exec {sys.executable} "$@"\n'
                    '[ "$1" = -c ] && exit 0\n[ "$1" = - ] && exit 1\ntouch started; sleep 2; s=$1; run=default; prev=""\n'
                    'for a; do [ "$prev" = --run ] && run=$a; prev=$a; done\n'
                    'mkdir -p "runs/$run/${s%.py}"; echo "{}" > "runs/$run/${s%.py}/stage.json"; echo "$s: saved"\n')
    fake.chmod(0o755)
    # Ctrl-C as a terminal's shell gives it: a job started in the background (as CI may run the suite) inherits
    # SIGINT ignored, and bash can then not trap it
    proc = subprocess.Popen(["bash", "run.sh", "--budget", "tiny", "--device", "cpu", "--run", "t"], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHON": str(fake)},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    for _ in range(600):   # once the first stage runs
        if (tmp_path / "started").exists():
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "01_sft.py: saved" in out
    assert ("run.sh: stopped (exit 130; run.sh was interrupted (Ctrl-C); a stage stopped with it says so above, the "
            "ones that finished are kept): rerun with --resume") in err
