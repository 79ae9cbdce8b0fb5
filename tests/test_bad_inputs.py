"""Bad inputs a review found reaching a traceback, or an exit 0 with NaN or a default the user did not ask
for: each is now one line naming the flag, file or row (a UserError, exit code 2), before anything is written."""

import json
import os
import re
import shutil
import subprocess
import sys
import zlib

import pytest
import torch

from conftest import ROOT, load_script

STAGES = {name: load_script(name) for name in ("01_sft", "02_reward", "03_split", "04_dpo", "05_ppo", "06_eval")}
sft, dpo, ev = STAGES["01_sft"], STAGES["04_dpo"], STAGES["06_eval"]


@pytest.mark.parametrize("name", sorted(STAGES))
def test_an_empty_flag_value_and_a_run_that_is_a_path_are_refused(name):
    """`--out ""` read as not given would write the default folder (03 replaced runs/<run>/03_split)."""
    mod = STAGES[name]
    with pytest.raises(mod.UserError, match=r"^--out: an empty value"):
        mod.parse_args(["--out", ""])
    for run in ("../x", "a/b", ".hidden"):
        with pytest.raises(mod.UserError, match="expected a plain name"):
            mod.parse_args(["--run", run])
    with pytest.raises(mod.UserError, match=r"^--device: an empty value"):
        mod.parse_args(["--device", " "])


def test_numbers_too_large_to_be_settings_are_refused():
    with pytest.raises(sft.UserError, match=r"--epochs 1e\+308: expected a number > 0, between -1e9 and 1e9"):
        sft.parse_args(["--epochs", "1e308"])   # the step count overflowed: math.ceil(inf)
    with pytest.raises(sft.UserError, match="--max-steps 1000+: expected .*between -1e9 and 1e9"):
        sft.parse_args(["--max-steps", "1" + "0" * 400])   # math.isfinite of the int overflowed
    with pytest.raises(sft.UserError, match=r"^--lr nan: expected a learning rate in \(0, 1\): [^,]*$"):
        sft.parse_args(["--lr", "nan"])   # no word of a size limit for NaN
    with pytest.raises(sft.UserError, match="--builtin-temperature 0.001: expected a number >= 0.0015"):
        sft.parse_args(["--builtin-temperature", "0.001"])   # exp(gap / T) overflowed in builtin_task
    assert sft.parse_args(["--builtin-temperature", "0.0015"]).builtin_temperature == 0.0015


def test_a_flag_is_read_by_its_whole_name_only():
    """argparse took '--see 5' for --seed 5: `run.sh ... -- --see 5` trained 01 with seed 5 beside a run and
    a report that said seed 0 (run.sh refuses the run's own flags after `--` by their whole names)."""
    for name, flag in (("01_sft", "--see"), ("02_reward", "--mod"), ("04_dpo", "--prec"), ("05_ppo", "--dev"),
                       ("06_eval", "--bas")):
        with pytest.raises(STAGES[name].UserError, match=f"^unrecognized arguments: {flag}=x \\(see --help\\)$"):
            STAGES[name].parse_args([f"{flag}=x"])


def test_json_numbers_past_python_s_limits_are_one_line(tmp_path):
    (tmp_path / "big.jsonl").write_text('{"prompt": "p"}\n{"prompt": "q", "extra": ' + "9" * 5000 + "}\n")
    with pytest.raises(sft.UserError, match=r"big.jsonl:2: not readable as JSON"):
        sft.read_jsonl(tmp_path / "big.jsonl")
    (tmp_path / "stage.json").write_text('{"stage": "01_sft", "n": ' + "9" * 5000 + "}")
    with pytest.raises(sft.UserError, match="stage.json: not a readable JSON record"):
        sft.read_json(tmp_path / "stage.json")
    rows = [{"prompt": "p", "chosen": "a", "rejected": "b", "gold_chosen": 0.5, "gold_rejected": 0.1},
            {"prompt": "q", "chosen": "a", "rejected": "b", "gold_chosen": 10 ** 400, "gold_rejected": 0.1}]
    with pytest.raises(sft.UserError, match="row 2: gold_chosen and gold_rejected"):
        sft.normalise(rows, "f.jsonl")


def test_a_local_file_held_out_whole_or_not_at_all_is_named_as_such(tmp_path, capsys):
    """01 holds out ~5% of a local file's prompts by a hash: a file of one prompt fell whole in the test split,
    and 01 said '(5% of prompts)' then blamed special tokens for the empty train split."""
    def rows(name, prompts):
        path = tmp_path / name
        path.write_text("".join(json.dumps({"prompt": p, "chosen": f"A{j}", "rejected": f"B{j}"}) + "\n"
                                for j, p in enumerate(prompts)))
        return sft.parse_args(["--dataset", str(path)])
    row = lambda p: sft.normalise([{"prompt": p, "chosen": "a", "rejected": "b"}], "f")[0]
    held = [p for p in (f"Hello {i}" for i in range(100)) if zlib.crc32(sft.prompt_key(row(p)).encode()) % 100 < 5]
    kept = [p for p in (f"Hello {i}" for i in range(100)) if p not in held]
    with pytest.raises(sft.UserError, match=r"a.jsonl: its 1 distinct prompt\(s\) fell all in the held-out 5%, so "
                                            r"there is no train split; pass --test-dataset FILE$"):
        sft.load_dataset_rows(rows("a.jsonl", held[:1] * 20))
    with pytest.raises(sft.UserError, match=r"b.jsonl: its 3 distinct prompt\(s\) fell none in the held-out 5%, so "
                                            r"there is no test split"):
        sft.load_dataset_rows(rows("b.jsonl", kept[:3]))
    train, test, _ = sft.load_dataset_rows(rows("c.jsonl", held[:1] * 2 + kept[:3]))
    assert len(train) == 3 and len(test) == 2
    assert "held out 2 rows (1 of 4 distinct prompts, about 5% by a hash of each)" in capsys.readouterr().out
    assert dpo.drop_special_text([], None, "f") == [] == dpo.drop_long_pairs([], None, 8, "f")   # no rows: the caller names why


def test_a_stage_s_rows_are_checked_as_they_are_read(tmp_path):
    """01's data files and 03's sets, damaged or edited by hand: one line naming the file and row, not a
    KeyError or TypeError steps later (04 and 05 met one)."""
    good = {"prompt": [{"role": "user", "content": "hi"}], "chosen": "a", "rejected": "b"}
    path = tmp_path / "easy.jsonl"
    ends_on_reply = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    not_a_role = [{"role": "robot", "content": "hi"}]
    no_prompt = re.escape("its prompt is missing or not chat messages (roles system/user/assistant) ending on a "
                          "user turn")
    for row, why in (({**good, "prompt": "hi"}, no_prompt), ({**good, "prompt": ends_on_reply}, no_prompt),
                     ({**good, "prompt": not_a_role}, no_prompt),
                     ({k: v for k, v in good.items() if k != "chosen"}, "its chosen is missing or not text"),
                     ({**good, "gold_chosen": "high", "gold_rejected": 0.1}, "its gold_chosen is missing or not a number"),
                     ([1, 2], "is not a JSON object")):
        path.write_text(json.dumps(good) + "\n" + json.dumps(row) + "\n")
        with pytest.raises(dpo.UserError, match=f"easy.jsonl: row 2:? {why}; rerun the stage that wrote it"):
            dpo.read_stage_rows(path)
    path.write_text(json.dumps({"prompt": good["prompt"]}) + "\n" + json.dumps(good) + "\n")
    assert len(dpo.read_stage_rows(path, pairs=False)) == 2      # a test row may be a prompt alone
    path.write_text(json.dumps({"prompt": good["prompt"], "chosen": "a"}) + "\n")
    with pytest.raises(dpo.UserError, match="its rejected is missing"):   # but not half a pair
        dpo.read_stage_rows(path, pairs=False)
    path.write_text("")
    with pytest.raises(dpo.UserError, match="easy.jsonl: no rows"):
        dpo.read_stage_rows(path)
    assert dpo.read_stage_rows(path, empty_ok=True) == []


def test_output_folders_the_system_would_refuse_after_the_work_are_refused_before(tmp_path):
    for name in ("x" * 256, "z" * 240):   # 240: fits, but a run's output kept aside (name.unsaved-PID-i) would not
        with pytest.raises(dpo.UserError, match=f"a folder name of {len(name)} bytes; expected at most 230"):
            dpo.check_output(tmp_path / name, False, "03_split")
    with pytest.raises(dpo.UserError, match="not usable as an output folder"):   # a folder above it too long
        dpo.check_output(tmp_path / ("y" * 300) / "out", False, "03_split")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    for out in (tmp_path / "dangling", tmp_path / "dangling" / "split"):
        with pytest.raises(dpo.UserError, match="dangling: a symbolic link to .*nowhere, which does not exist"):
            dpo.check_output(out, False, "03_split")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dangling"]   # nothing made
    dpo.check_output(tmp_path / ("z" * 230), False, "03_split")


def test_a_model_with_non_finite_weights_or_a_config_of_the_wrong_shape_is_refused(tmp_path, tiny_model_dir):
    """NaN weights gave an exit 0 with 'RM score nan' in 06's report, and a misleading message in 04."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        model.model.norm.weight[0] = float("nan")
    model.save_pretrained(tmp_path / "nan")
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(tmp_path / "nan")
    with pytest.raises(dpo.UserError, match="--model .*nan: its weights hold NaN or inf values"):
        dpo.load_model(str(tmp_path / "nan"), "policy", "--model", torch.device("cpu"))
    config = json.load(open(tmp_path / "nan/config.json"))
    for key, value in (("architectures", 5), ("id2label", 5), ("architectures", [None])):
        json.dump({**config, key: value}, open(tmp_path / "nan/config.json", "w"))
        for kind in ("policy", "reward"):
            with pytest.raises(dpo.UserError, match="its config.json has architectures .* expected a list of class names"):
                dpo.check_model(str(tmp_path / "nan"), kind, "--reward")


def test_rows_the_gold_judge_cannot_score_are_refused_before_any_sampling():
    import builtin_task
    train, test = builtin_task.make_dataset(20, 10, seed=0)
    assert ev.gold_judge(test, "t.jsonl") is builtin_task
    plain = {"prompt": [{"role": "user", "content": "Tell me a joke."}]}   # no family, no meta
    assert ev.gold_judge([plain], "t.jsonl") is None
    with pytest.raises(ev.UserError, match=r"^t.jsonl: row 3 \(prompt 'Tell me a joke.'\) has no family and meta, "
                                           r"but 3 of the 4 rows are the built-in task's"):
        ev.gold_judge(test[:2] + [plain] + test[2:3], "t.jsonl")   # all four scored by the RM alone, in silence
    for bad in ({"family": "poetry", "meta": {}}, {"family": "arithmetic", "meta": {}},
                {"family": "constraints", "meta": {**next(r for r in test if r["family"] == "constraints")["meta"], "n": 0}}):
        rows = test[:3] + [{**test[3], **bad}]
        with pytest.raises(ev.UserError, match=f"t.jsonl: row 4: family '{bad['family']}' .* is no built-in task row"):
            ev.gold_judge(rows, "t.jsonl")
    # hand-made meta the task never makes, found by a probe: numbers already sorted (a ZeroDivisionError on a
    # reordering of them) and a yes/no request that is no text; probed with the task's own responses and a yes/no
    sort, yesno = (next(r for r in test if r["family"] == f) for f in ("sorting", "yesno"))
    sorted_row = {**sort, "meta": {**sort["meta"], "numbers": sorted(sort["meta"]["numbers"])}}
    for bad in (sorted_row, {**yesno, "meta": {**yesno["meta"], "request": 0}}):
        with pytest.raises(ev.UserError, match=r"t.jsonl: row 1: family .* is no built-in task row"):
            ev.gold_judge([bad], "t.jsonl")
    # and what passes the probes but fails on a sampled response is one line too, not a traceback
    swapped = ", ".join(map(str, sorted(sort["meta"]["numbers"])[:2][::-1] + sorted(sort["meta"]["numbers"])[2:]))
    assert ev.judge_all(builtin_task, [sort], [swapped], "t.jsonl")[0][0] < 1
    with pytest.raises(ev.UserError, match=r"t.jsonl: the prompt 'Sort .* \(family 'sorting'\): the gold judge "
                                           r"fails on the sampled response .*ZeroDivisionError"):
        ev.judge_all(builtin_task, [sort, sorted_row], [swapped, swapped], "t.jsonl")


def test_a_damaged_budget_record_is_an_unknown_budget(tmp_path):
    (tmp_path / "stage.json").write_text(json.dumps({"stage": "04_dpo", "args": {}, "data": {"split": "easy"},
                                                     "final": {"steps": 3, "pairs_per_step": 8, "n_pairs": 24,
                                                               "epochs_seen": "0.4"}}))
    assert ev.budget_of(tmp_path) == "? (its stage.json is not as the stages write it)"
    (tmp_path / "stage.json").write_text(json.dumps({"stage": "05_ppo", "args": {"rollout_batch": 8}, "final": {}}))
    assert ev.budget_of(tmp_path) == "? (its stage.json is not as the stages write it)"   # args.steps missing


def test_run_sh_refuses_an_empty_value_and_resumes_no_stage_whose_record_is_cut(tmp_path):
    work = tmp_path / "w"
    work.mkdir()
    (work / "run.sh").write_bytes((ROOT / "run.sh").read_bytes())
    proc = subprocess.run(["bash", "run.sh", "--model", ""], cwd=work, capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.strip() == \
        "run.sh: --model needs a value, not empty (see bash run.sh --help)"
    # run.sh's `finished`: a stage.json cut short is no finished stage (--resume skipped it, and 03 then failed)
    fn = (ROOT / "run.sh").read_text().split("finished() {")[1].split("\n}\n")[0]
    for text, want in (('{"stage": "02_reward"}', "yes"), ('{"stage": "02_re', "no")):
        (tmp_path / "s").mkdir(exist_ok=True)
        (tmp_path / "s/stage.json").write_text(text)
        script = f'PY={sys.executable}\nfinished() {{{fn}\n}}\nfinished "{tmp_path / "s"}" && echo yes || echo no'
        assert subprocess.run(["bash", "-c", script], capture_output=True, text=True).stdout.strip() == want


def test_a_summarize_from_feedback_row_whose_post_is_no_text_is_skipped(capsys):
    row = lambda post: {"info": {"post": post, "subreddit": "r", "title": "t"}, "choice": 0,
                        "summaries": [{"text": "a"}, {"text": "b"}]}
    kept = sft.normalise([row("a post"), row(["x"])], "f.jsonl")   # had become the prompt "POST: ['x']"
    assert len(kept) == 1 and "POST: a post" in kept[0]["prompt"][0]["content"]
    assert "post (or article), subreddit or title is not text" in capsys.readouterr().out


def test_06_refuses_a_policy_with_nan_weights_before_sampling_any(tmp_path, tiny_model_dir):
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight[0, 0] = float("inf")
    model.save_pretrained(tmp_path / "inf")
    ev.check_weights(tiny_model_dir, "policy")
    with pytest.raises(ev.UserError, match=r"policy .*inf: its weights hold NaN or inf values \(model.layers.0.mlp"):
        ev.check_weights(tmp_path / "inf", "policy")
    weights = (tmp_path / "inf/model.safetensors").read_bytes()    # a copy cut short, then one that is no safetensors
    for broken in (weights[: len(weights) // 2], b"not safetensors at all"):
        (tmp_path / "inf/model.safetensors").write_bytes(broken)
        with pytest.raises(ev.UserError, match=r"policy .*inf: model.safetensors is not readable as safetensors"):
            ev.check_weights(tmp_path / "inf", "policy")
    # a config.json whose vocab_size contradicts the weights: named as the policy's own fault, before the checks
    # made from its config blamed the reward model ("its embedding has 49152 rows ... up to 49999")
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight[0, 0] = 0.0
    model.save_pretrained(tmp_path / "inf")
    config = json.load(open(tmp_path / "inf/config.json"))
    json.dump({**config, "vocab_size": config["vocab_size"] + 8}, open(tmp_path / "inf/config.json", "w"))
    with pytest.raises(ev.UserError, match=r"policy .*inf: its weights do not match its config.json: of another "
                                           rf"shape: model.embed_tokens.weight \({config['vocab_size']}, "):
        ev.check_weights(tmp_path / "inf", "policy")
    # the weights deleted since (run.sh --resume took the folder as finished): before sampling, not after
    (tmp_path / "inf/model.safetensors").unlink()
    (tmp_path / "inf/stage.json").write_text('{"stage": "04_dpo"}')
    with pytest.raises(ev.UserError, match=r"policy .*inf: no weights there \(model.safetensors\); rerun 04_dpo$"):
        ev.check_weights(tmp_path / "inf", "policy")


def test_a_split_row_with_one_gold_score_or_a_relabelled_that_is_no_bool_is_refused(tmp_path):
    good = {"prompt": [{"role": "user", "content": "hi"}], "chosen": "a", "rejected": "b", "gold_chosen": 0.5,
            "gold_rejected": 0.1, "relabelled": False}
    path = tmp_path / "hard.jsonl"
    for change, why in (({"gold_rejected": None}, "gold_rejected is missing or not a number"),
                        ({"relabelled": "no"}, "relabelled is missing or not true or false")):   # "no" flipped the pair
        row = {k: v for k, v in {**good, **change}.items() if v is not None}
        path.write_text(json.dumps(good) + "\n" + json.dumps(row) + "\n")
        with pytest.raises(dpo.UserError, match=f"hard.jsonl: row 2: its {why}"):
            dpo.read_stage_rows(path)


def test_06_refuses_two_policies_it_would_report_under_one_name(tmp_path, monkeypatch):
    run_dir = tmp_path / "runs/t"
    for d in (run_dir / "04_dpo", tmp_path / "04_dpo"):
        d.mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ev.UserError, match="04_dpo would both be reported as 04_dpo"):
        ev.policy_records([run_dir / "04_dpo", ev.Path("04_dpo")], run_dir, tmp_path / "rm", "t")


@pytest.mark.parametrize("points, why", [("0.05,0.050", "0.050 is named twice"), ("5000000000", "is past 1e9")])
def test_run_sh_refuses_a_sweep_point_twice_or_past_what_03_takes(tmp_path, points, why):
    (tmp_path / "run.sh").write_bytes((ROOT / "run.sh").read_bytes())
    proc = subprocess.run(["bash", "run.sh", "--sweep-threshold", points], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 2 and why in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_a_full_disk_is_one_line_and_keeps_nothing(tmp_path, tiny_model_dir):
    """A write the system refuses while a stage saves (here a file-size limit, as a full disk refuses one:
    safetensors' own error type) is one line naming the output, and leaves neither it nor its temporary."""
    import resource
    import signal

    def limit_file_size():   # files past 16 KiB fail with EFBIG instead of killing the process
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (16 << 10, 16 << 10))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, str(ROOT / "01_sft.py"), "--model", str(tiny_model_dir), "--run", "r",
                           "--max-steps", "1", "--builtin-train-pairs", "16", "--builtin-test-prompts", "4"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
                          preexec_fn=limit_file_size)
    assert proc.returncode == 2, proc.stderr[-2000:]
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith("01_sft.py: error: runs/r/01_sft: could not be written (") and "File too large" in line
    assert line.endswith("; nothing of this run was kept")
    assert os.listdir(tmp_path / "runs/r") == []


def test_a_refused_write_while_saving_keeps_the_earlier_output_and_no_record_cut_short(tmp_path):
    """An OSError inside the save block is one line and leaves an earlier output as it was; and a record
    written there is closed before the block ends, so the disk's refusal is raised, not lost at exit."""
    import errno
    out = tmp_path / "03_split"
    out.mkdir()
    (out / "stats.json").write_text('{"stage": "03_split"}')
    with pytest.raises(dpo.UserError, match=r"03_split: could not be written \(No space left on device\); nothing "
                                            r"of this run was kept \(the earlier output is untouched\)$"):
        with dpo.output_dir(out, True, "03_split") as tmp:
            (tmp / "easy.jsonl").write_text("{}")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["03_split"]
    assert (out / "stats.json").read_text() == '{"stage": "03_split"}'
    code = ("import resource, signal, sys; sys.path.insert(0, sys.argv[1]); from conftest import load_script; "
            "signal.signal(signal.SIGXFSZ, signal.SIG_IGN); resource.setrlimit(resource.RLIMIT_FSIZE, (10, 10)); "
            "load_script('04_dpo').write_json({'stage': '03_split', 'pairs': 500}, sys.argv[2] + '/stats.json')")
    proc = subprocess.run([sys.executable, "-c", code, str(ROOT / "tests"), str(tmp_path)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 1 and "OSError: [Errno 27] File too large" in proc.stderr, proc.stderr[-2000:]


def test_a_disk_without_room_for_the_model_is_refused_before_training(tmp_path, monkeypatch):
    model = torch.nn.Linear(1024, 1024)   # 4 MiB of fp32 weights, and the 64 MiB margin
    sft.check_room(tmp_path / "out", model)
    monkeypatch.setattr(sft.shutil, "disk_usage", lambda path: type("Usage", (), {"free": 60 << 20})())
    with pytest.raises(sft.UserError, match=r"out: 60 MiB free on its disk \(.*\), and this stage saves about "
                                            r"68 MiB; free some space"):
        sft.check_room(tmp_path / "out", model)
    with pytest.raises(sft.UserError, match="saves about 78 MiB"):   # 01's data files beside the model
        sft.check_room(tmp_path / "out", model, extra=10 << 20)


def test_a_config_alone_is_checked_for_its_positions():
    """06 checks each policy's length from its config before it samples any policy."""
    from transformers import LlamaConfig
    config = LlamaConfig(max_position_embeddings=64)
    ev.check_context(config, 64, "policy p", "--max-prompt-len plus --max-new-tokens")
    with pytest.raises(ev.UserError, match="allow sequences of 65 tokens, but policy p's model has 64 positions"):
        ev.check_context(config, 65, "policy p", "--max-prompt-len plus --max-new-tokens")


def test_prompts_that_end_on_the_reply_or_name_unknown_roles_are_skipped_as_data(tmp_path):
    """A prompt is answered by the response: it ends on the user's turn (one ending on the assistant's would
    be continued, not answered), and its roles are those chat templates know; such rows are skipped and
    counted, as other malformed rows are, in every form that carries chat messages."""
    user, reply = {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}
    rows = [{"prompt": [user], "chosen": "a", "rejected": "b"},
            {"prompt": [user, reply], "chosen": "a", "rejected": "b"},
            {"prompt": [{"role": "robot", "content": "hi"}], "chosen": "a", "rejected": "b"},
            {"prompt": [{"role": "system", "content": "be brief"}, reply, user], "chosen": "a", "rejected": "b"}]
    kept = sft.normalise(rows, "f.jsonl")
    assert [r["prompt"] for r in kept] == [[user], rows[3]["prompt"]]
    conversational = [{"chosen": [user, {"role": "assistant", "content": c}], "rejected": [user, reply]}
                      for c in ("a", "b")] + [{"chosen": [user, reply, {"role": "assistant", "content": "a"}],
                                               "rejected": [user, reply, {"role": "assistant", "content": "b"}]}]
    assert len(sft.normalise(conversational, "c.jsonl")) == 2    # the third's prompt ends on the assistant
    prompts = [{"prompt": [user]}, {"prompt": [user, reply]}]
    assert [r["prompt"] for r in sft.normalise(prompts, "p.jsonl", pairs=False)] == [[user]]


def test_text_holding_a_special_token_is_dropped_or_named_not_read_as_the_token(tiny, capsys):
    """'<|im_end|>' written inside a response would be tokenised as the end of turn itself (an EOS in the
    middle of a response, then a turn the data never had); such rows are dropped and counted where a stage
    filters its pairs and prompts, and named by row where a file is encoded without that filter."""
    _, tok = tiny
    eos = tok.eos_token
    good = {"prompt": [{"role": "user", "content": "hi"}], "chosen": "a", "rejected": "b"}
    bad_reply = {**good, "chosen": f"a{eos} and more"}
    bad_prompt = {**good, "prompt": [{"role": "user", "content": f"hi{eos}"}]}
    assert dpo.special_text(dpo.special_tokens(tok), good) is None
    assert dpo.special_text(dpo.special_tokens(tok), bad_reply) == ("chosen", eos)
    assert dpo.drop_long_pairs([good, bad_reply, bad_prompt], tok, 16, "f.jsonl") == [good]
    assert f"f.jsonl: dropped 2 of 3 rows whose text holds a special token of the tokenizer (the first: {eos!r} " \
           f"in its chosen)" in capsys.readouterr().out
    assert sft.drop_long_prompts([bad_prompt, good], tok, 64, "test.jsonl") == [good]
    # named by its text (the rows encoded may be filtered, deduplicated or sorted: their place is not the file's)
    with pytest.raises(dpo.UserError, match=re.escape(f"f.jsonl: a row's prompt holds {eos!r} (in 'hi{eos}'), a "
                                                      f"special token of the tokenizer")):
        dpo.encode_rows(tok, [good, bad_prompt], 64, 16, "f.jsonl")
    # prompts alone (04 --online, 05, 06): a response column they never read is not looked at
    assert len(dpo.encode_rows(tok, [good, bad_reply], 64, None, "f.jsonl", responses=())) == 2
    long_reply = {**good, "chosen": "x" * 30 + eos + "y" * 30}   # quoted with 20 characters either side
    for row, around in ((bad_reply, f"a{eos} and more"), (long_reply, "x" * 20 + eos + "y" * 20)):
        with pytest.raises(dpo.UserError, match=re.escape(f"f.jsonl: a row's chosen holds {eos!r} (in {around!r})")):
            dpo.encode_rows(tok, [good, row], 64, 16, "f.jsonl")
    with pytest.raises(dpo.UserError, match="every row's text holds a special token"):
        dpo.drop_long_pairs([bad_reply], tok, 16, "f.jsonl")


def test_a_gzip_file_named_jsonl_and_a_missing_path_are_named_as_such(tmp_path):
    import gzip
    (tmp_path / "pairs.jsonl").write_bytes(gzip.compress(b'{"prompt": "p", "chosen": "a", "rejected": "b"}\n'))
    with pytest.raises(dpo.UserError, match="pairs.jsonl: a gzip-compressed file; name it pairs.jsonl.gz"):
        dpo.load_rows(str(tmp_path / "pairs.jsonl"), "--data")   # not "not UTF-8 (byte 0x8b)"
    (tmp_path / "rows.jsonl").write_text('[{"prompt": "p"}]\n')
    with pytest.raises(dpo.UserError, match="rows.jsonl: line 1 is a JSON array; expected one JSON object a line"):
        dpo.load_rows(str(tmp_path / "rows.jsonl"), "--data")   # not "row 1 is not a JSON object"
    for spec in (str(tmp_path / "no/such"), "./data", "a/b/c:train", "mydata.csv", "data/pairs.parquet"):
        with pytest.raises(dpo.UserError, match=f"--data {re.escape(spec)}: file not found"):   # not "from the hub"
            dpo.load_rows(spec, "--data")


def test_a_generation_config_that_is_no_json_is_one_line(tiny_model_dir, tmp_path):
    """transformers replaced an unreadable generation_config.json with its defaults in silence (02, 04 and 06 ran;
    04's output got a new one): the file is named before any work."""
    import shutil
    model = tmp_path / "m"
    shutil.copytree(tiny_model_dir, model)
    (model / "generation_config.json").write_text('{"bos_token_id": 1, "eos_token_id": ')
    for stage in (dpo, ev, sft):
        with pytest.raises(stage.UserError, match=r"^--model .*/m: its generation_config.json is not readable JSON "
                                                  r"\(JSONDecodeError: .*\); fix it, or remove it"):
            stage.check_model(str(model), "policy", "--model")
    (model / "generation_config.json").write_text('{"eos_token_id": 2}')
    dpo.check_model(str(model), "policy", "--model")


def test_a_saved_policy_stops_generating_at_the_eos_its_responses_end_with(tiny_model_dir, capsys):
    """Our samplers stop at the tokenizer's EOS; generate() on a saved model reads its generation_config, which a
    base model may point at another id: the policy stages add the tokenizer's EOS before saving."""
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tok = dpo.load_tokenizer(str(tiny_model_dir), "--model")
    other = tok.eos_token_id + 1
    for before, after in ((other, [other, tok.eos_token_id]), ([other, other + 1], [other, other + 1, tok.eos_token_id]),
                          (None, tok.eos_token_id)):
        model.generation_config.eos_token_id = before
        dpo.stop_at_eos(model, tok, "04_dpo")
        assert model.generation_config.eos_token_id == after
        assert "04_dpo: note: the model's generation_config stops at" in capsys.readouterr().out
        dpo.stop_at_eos(model, tok, "04_dpo")                         # already there: unchanged, no note
        assert model.generation_config.eos_token_id == after and not capsys.readouterr().out


def test_a_stage_file_swapped_replaced_or_edited_since_its_stage_wrote_it_is_refused(tmp_path):
    """04 trained on 03's hard set swapped in as the easy one, or on another run's, without a word: a file
    a stage records (its crc32) must still be that file where a later stage reads it."""
    split = tmp_path / "03_split"
    split.mkdir()
    rows = lambda answer: "".join(json.dumps({"prompt": [{"role": "user", "content": "Add 2 and 3."}], "chosen": a,
                                              "rejected": "6", "gap": 2.0}) + "\n" for a in answer)
    (split / "easy.jsonl").write_text(rows("5"))
    (split / "hard.jsonl").write_text(rows("57"))
    (split / "stats.json").write_text(json.dumps({"stage": "03_split",
                                                  "files": dpo.file_marks(split, ["easy.jsonl", "hard.jsonl"])}))
    assert len(dpo.read_stage_rows(split / "easy.jsonl")) == 1 and len(dpo.read_stage_rows(split / "hard.jsonl")) == 2
    (split / "easy.jsonl").rename(tmp_path / "e")
    (split / "hard.jsonl").rename(split / "easy.jsonl")
    (tmp_path / "e").rename(split / "hard.jsonl")
    for name in ("easy", "hard"):
        with pytest.raises(dpo.UserError, match=rf"03_split/{name}.jsonl: not the file 03_split wrote there \(its crc32 "
                                                rf"differs from the one stats.json records"):
            dpo.read_stage_rows(split / f"{name}.jsonl")
    for files in ({}, "x", {"easy.jsonl": "123"}, {"easy.jsonl": None}):   # the guard switched off by an edited record
        (split / "stats.json").write_text(json.dumps({"stage": "03_split", "files": files}))
        with pytest.raises(dpo.UserError, match=r"03_split/stats.json: its 'files' entry holds no crc32 of easy.jsonl "
                                                r"\(an integer\), which the stage that wrote them records; rerun 03_split$"):
            dpo.read_stage_rows(split / "easy.jsonl")
    (split / "stats.json").write_text(json.dumps({"stage": "03_split"}))   # an older 03's record: no marks, read
    assert len(dpo.read_stage_rows(split / "easy.jsonl")) == 2
    (split / "easy.jsonl").unlink()   # deleted, its record left: was a FileNotFoundError traceback in 02-06
    for record in ({"stage": "03_split"}, {"stage": "03_split", "files": {"easy.jsonl": 5}}):
        (split / "stats.json").write_text(json.dumps(record))
        with pytest.raises(dpo.UserError, match=r"03_split/easy.jsonl: missing; rerun 03_split$"):
            dpo.read_stage_rows(split / "easy.jsonl")


def test_06_notes_a_policy_whose_start_was_remade_since_it_was_trained(tmp_path):
    """04 rerun in place after 05 had trained from it: 06 reported 05's row 'after 04_dpo' with the new 04's
    budget, in silence. Each trained stage marks the records of the models it started from (stage_marks)."""
    sft_dir, dpo_dir, ppo_dir = (tmp_path / n for n in ("01_sft", "04_dpo", "05_ppo"))
    for d, record in ((sft_dir, {"stage": "01_sft"}), (dpo_dir, {"stage": "04_dpo", "final": {"steps": 3}})):
        d.mkdir()
        (d / "stage.json").write_text(json.dumps(record))
    sft_name, dpo_name = (dpo.path_or_hub_id(d) for d in (sft_dir, dpo_dir))
    ppo_dir.mkdir()
    (ppo_dir / "stage.json").write_text(json.dumps({"stage": "05_ppo", "policy_init": dpo_name, "ref": dpo_name,
                                                    "sft": sft_name, "marks": dpo.stage_marks([dpo_dir, sft_dir])}))
    assert set(dpo.stage_marks([dpo_dir, sft_dir, None, tmp_path])) == {dpo_name, sft_name}   # stage folders only
    assert ev.remade_inputs(ppo_dir) == []
    (dpo_dir / "stage.json").write_text(json.dumps({"stage": "04_dpo", "final": {"steps": 5}}))   # 04 rerun
    assert ev.remade_inputs(ppo_dir) == [str(dpo_dir.resolve())]
    rm_dir = tmp_path / "02_reward"   # the RM it was trained against, remade since (was not noted)
    rm_dir.mkdir()
    (rm_dir / "stage.json").write_text(json.dumps({"stage": "02_reward", "final": {"steps": 3}}))
    (ppo_dir / "stage.json").write_text(json.dumps({"stage": "05_ppo", "policy_init": dpo_name,
                                                    "reward": dpo.path_or_hub_id(rm_dir),
                                                    "marks": dpo.stage_marks([dpo_dir, rm_dir])}))
    assert ev.remade_inputs(ppo_dir) == []
    (rm_dir / "stage.json").write_text(json.dumps({"stage": "02_reward", "final": {"steps": 4}}))
    assert ev.remade_inputs(ppo_dir) == [str(rm_dir.resolve())]
    (ppo_dir / "stage.json").write_text(json.dumps({"stage": "05_ppo", "policy_init": dpo_name}))  # an older record
    assert ev.remade_inputs(ppo_dir) == []


def test_an_output_inside_another_stage_s_output_or_holding_an_input_is_refused(tmp_path):
    """05 --out runs/t/04_dpo/ppo was saved, and 04's next --overwrite deleted it with its own output; an
    --out that holds an input would delete the input when replaced."""
    run = tmp_path / "runs/t"
    for d in ("04_dpo", "02_reward"):
        (run / d).mkdir(parents=True)
        (run / d / "stage.json").write_text(json.dumps({"stage": d}))
    for out, holder in ((run / "04_dpo/ppo", "04_dpo"), (run / "02_reward/a/b", "02_reward")):
        with pytest.raises(dpo.UserError, match=f"{out}: inside .*{holder}, the output of {holder}, which replacing "
                                                f"it would delete; pick a folder outside it"):
            dpo.check_output(out, False, "05_ppo")
    (run / "05_ppo").mkdir()
    (run / "05_ppo/stage.json").write_text(json.dumps({"stage": "05_ppo"}))
    (run / "05_ppo/sub").mkdir()
    with pytest.raises(dpo.UserError, match="05_ppo: also an input of this stage, or holds one"):
        dpo.check_output(run / "05_ppo", True, "05_ppo", inputs=[str(run / "05_ppo/sub")])
    dpo.check_output(run / "05_ppo", True, "05_ppo", inputs=[str(run / "04_dpo")])
    dpo.check_output(run / "05_ppo_b", False, "05_ppo")
    (tmp_path / "results.json").write_text('{"accuracy": 1}')   # a file of yours of that name: no stage's output
    dpo.check_output(run / "05_ppo_c", False, "05_ppo")


def test_a_chat_template_that_does_not_parse_names_the_model_not_the_data(tmp_path, tiny_model_dir):
    import shutil
    model = tmp_path / "m"
    shutil.copytree(tiny_model_dir, model)
    config = json.loads((model / "tokenizer_config.json").read_text())
    (model / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": "{% if %}"}))
    (model / "chat_template.jinja").unlink(missing_ok=True)
    with pytest.raises(dpo.UserError, match=f"--model {model}: its chat template fails on a one-turn prompt "
                                            f"\\(TemplateSyntaxError"):
        dpo.load_tokenizer(str(model), "--model")


def test_ctrl_c_while_torch_loads_is_one_line(tmp_path):
    """Ctrl-C in a stage's first seconds (torch importing, before run_main) was a traceback from inside torch.
    A stand-in torch that receives the Ctrl-C as it loads makes the moment exact."""
    (tmp_path / "torch").mkdir()
    (tmp_path / "torch/__init__.py").write_text("import os, signal, time\nos.kill(os.getpid(), signal.SIGINT)\n"
                                                "time.sleep(30)\n")
    for name in STAGES:
        proc = subprocess.run([sys.executable, str(ROOT / f"{name}.py"), "--help"], cwd=tmp_path, capture_output=True,
                              text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(tmp_path)})
        assert (proc.returncode, proc.stderr) == (130, f"{name}.py: interrupted while starting; nothing was written\n")


def test_bench_flags_are_checked_as_one_line_before_any_work(monkeypatch, capsys):
    """bench.py met bad flags with tracebacks (a ZeroDivisionError for --steps 0, transformers' OSError for a
    missing --model, a UserError for --device bogus) and ran with PPO's flags on other benches, ignoring them."""
    bench = load_script("bench")
    for argv, said in ((["dpo", "--steps", "0"], "--steps 0: expected an integer >= 1"),
                       (["dpo", "--minibatch", "2", "--eager-sampling"], "--minibatch, --eager-sampling: read by the "
                                                                          "ppo bench only, not by dpo"),
                       (["ppo", "--minibatch", "9"], "--minibatch 9 is more than --batch 8"),
                       (["sft", "--model", "m", "--shape", "smollm2-135m"], "--model and --shape both name the model"),
                       (["rm", "--model", "/no/such/model"], "--model /no/such/model: no such directory"),
                       (["dpo", "--device", "bogus"], "--device 'bogus': expected auto, cpu, cuda or cuda:N"),
                       (["sft", "--ppo-epochs", "4"], "--ppo-epochs: read by the ppo bench only"),   # its default value
                       (["ppo", "--eager-sampling", "--device", "cpu"], "--eager-sampling on cpu: the CUDA-graph "
                                                                        "sampler is CUDA's"),
                       (["dpo", "--stpes", "3"], "unrecognized arguments: --stpes 3 (see --help)"),   # argparse's own
                       (["ppo", "--batch", "x"], "argument --batch: invalid int value: 'x' (see --help)")):
        monkeypatch.setattr(sys, "argv", ["bench.py", *argv])
        with pytest.raises(SystemExit) as e:
            bench.main()
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.startswith("bench.py: error: " + said) and err.count("\n") == 1, err


def test_06_refuses_a_run_folder_whose_policy_lost_its_config_or_record(tmp_path):
    """06 with no policies named left a 04_dpo without config.json out of the report, in silence."""
    for name in ("01_sft", "04_dpo", "05_ppo", "04_dpo.unsaved-12"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text("{}")
        (tmp_path / name / "stage.json").write_text(json.dumps({"stage": name[:6]}))
    (tmp_path / "05_notes.txt").write_text("a file, no policy")
    assert [d.name for d in ev.default_policies(tmp_path)] == ["01_sft", "04_dpo", "05_ppo"]
    (tmp_path / "04_dpo/config.json").unlink()
    with pytest.raises(ev.UserError, match=r"04_dpo: no config.json there, so no finished policy; rerun 04_dpo, or "
                                           r"name the policies to evaluate$"):
        ev.default_policies(tmp_path)
    shutil.rmtree(tmp_path / "04_dpo")
    (tmp_path / "05_ppo/stage.json").unlink()
    with pytest.raises(ev.UserError, match=r"05_ppo: no stage.json there, so no finished policy; rerun the stage "
                                           r"that saved it"):
        ev.default_policies(tmp_path)
