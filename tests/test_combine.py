"""06_eval.py --combine on hand-made 06_eval outputs of two runs: means and spread over runs, and the
paper's comparisons as paired differences."""
import json
import shutil
from pathlib import Path

import pytest

from conftest import load_script, run_stage


def fake_eval(d, seed, gold, rm, prompts):
    """A 06_eval directory as 06_eval.py writes it: results.json and samples.jsonl, one sample per prompt."""
    d.mkdir(parents=True)
    results = {name: {"gold": {"mean": sum(g) / len(g)}, "rm": {"mean": sum(rm[name]) / len(rm[name])}}
               for name, g in gold.items()}
    json.dump({"args": {"seed": seed, "samples_per_prompt": 1}, "n_prompts": len(prompts),
               "dataset": {"name": "builtin"}, "results": results}, open(d / "results.json", "w"))
    with open(d / "samples.jsonl", "w") as f:
        for name in gold:
            for p, g, r in zip(prompts, gold[name], rm[name]):
                f.write(json.dumps({"policy": name, "prompt": p, "response": "", "gold": g, "rm": r}) + "\n")


def test_combine_two_runs(tmp_path):
    names = ("01_sft", "04_dpo", "04_dpo_all", "05_ppo")
    fake_eval(tmp_path / "a/06_eval", 0, {"01_sft": [0, 0, 0, 0], "04_dpo": [1, 0, 0, 0],
                                          "04_dpo_all": [0, 1, 0, 0], "05_ppo": [1, 1, 1, 0]},
              {n: [1.0, 2.0, 3.0, 4.0] for n in names}, ["p1", "p2", "p3", "p4"])
    fake_eval(tmp_path / "b/06_eval", 1, {"01_sft": [0, 0, 0], "04_dpo": [0, 0, 0],
                                          "04_dpo_all": [1, 1, 0], "05_ppo": [1, 0, 0]},
              {n: [0.0, 0.0, 0.0] for n in names}, ["q1", "q2", "q3"])
    run_stage("06_eval.py", "--combine", "a", "b/06_eval", "--out", "both", cwd=tmp_path)
    res = json.load(open(tmp_path / "both/results.json"))
    assert res["seeds"] == [0, 1]
    gold = res["policies"]["05_ppo"]["gold"]
    assert gold["per_seed"] == pytest.approx([0.75, 1 / 3])
    assert gold["mean"] == pytest.approx((0.75 + 1 / 3) / 2)
    assert gold["std"] == pytest.approx(abs(0.75 - 1 / 3) / 2 ** 0.5)
    claims = {(c["policy"], c["baseline"], c["metric"]): c for c in res["claims"]}
    assert set(claims) == {("05_ppo", "04_dpo_all", "gold"), ("05_ppo", "04_dpo_all", "rm"),
                           ("04_dpo", "04_dpo_all", "gold"), ("04_dpo", "04_dpo_all", "rm")}
    mpo = claims[("05_ppo", "04_dpo_all", "gold")]
    assert mpo["per_seed"] == pytest.approx([0.5, -1 / 3])      # 0.75 - 0.25, 1/3 - 2/3
    assert mpo["mean"] == pytest.approx((0.5 - 1 / 3) / 2) and mpo["seeds_in_favour"] == 1
    assert mpo["lo"] <= mpo["mean"] <= mpo["hi"]
    assert mpo["requests"] == 3 and mpo["verdict"] == "no verdict (n too small)"   # 4 and 3 prompts: too few
    easy = claims[("04_dpo", "04_dpo_all", "gold")]
    assert easy["per_seed"] == pytest.approx([0.0, -2 / 3]) and easy["seeds_in_favour"] == 0
    assert claims[("05_ppo", "04_dpo_all", "rm")]["lo"] == pytest.approx(0.0)   # identical RM scores
    # the interval over the two runs: mean +- t(1) s / sqrt(2), t(1) = 12.706
    half = 12.706 * abs(0.5 + 1 / 3) / 2 ** 0.5 / 2 ** 0.5
    assert (mpo["lo"], mpo["hi"]) == (pytest.approx(mpo["mean"] - half), pytest.approx(mpo["mean"] + half))
    report = (tmp_path / "both/report.md").read_text()
    assert "| 05_ppo | " in report and "MPO beats vanilla DPO" in report and "+0.083" in report
    # the claims whose baseline no run evaluated are named, not left out in silence
    assert ("2 of the paper's claims not tested (MPO beats vanilla PPO; the DPO reference beats the SFT reference): "
            "the runs evaluate only one of its two policies; run.sh --compare") in report
    assert "Student t interval over the runs" in report and report.count("Note:") == 1   # that one alone


def test_a_tie_is_in_favour_of_an_at_least_claim_only(tmp_path):
    ev = load_script("06_eval")
    prompts = [f"p{i}" for i in range(4)]
    for run, seed, ipo_md in (("a", 0, [1, 1, 0, 0]), ("b", 1, [1, 0, 0, 0])):   # run b: a tie on gold
        fake_eval(tmp_path / run / "06_eval", seed, {"04_dpo": [1, 0, 0, 0], "04_dpo_all": [1, 0, 0, 0],
                                                    "04_ipo_md": ipo_md, "04_nash_md_pg": [1, 0, 0, 0]},
                  {n: [0.0] * 4 for n in ("04_dpo", "04_dpo_all", "04_ipo_md", "04_nash_md_pg")}, prompts)
    ev.main(ev.parse_args(["--combine", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "c")]))
    claims = {(c["policy"], c["metric"]): c for c in json.load(open(tmp_path / "c/results.json"))["claims"]}
    assert claims[("04_ipo_md", "gold")]["per_seed"] == pytest.approx([0.25, 0.0])
    assert claims[("04_ipo_md", "gold")]["seeds_in_favour"] == 2 and claims[("04_ipo_md", "rm")]["seeds_in_favour"] == 2
    assert claims[("04_dpo", "gold")]["seeds_in_favour"] == 0    # "beats": a tie is not in its favour


def test_combine_notes_runs_scored_by_different_judges(tmp_path):
    names = ("01_sft", "04_dpo")
    for run, seed, judge in (("a", 0, "builtin_task.py crc32 0000aaaa"), ("b", 1, None)):
        fake_eval(tmp_path / run, seed, {n: [0, seed] for n in names}, {n: [0.0, 1.0] for n in names}, ["x", "y"])
        res = json.load(open(tmp_path / run / "results.json"))
        json.dump({**res, "judge": judge}, open(tmp_path / run / "results.json", "w"))
    proc = run_stage("06_eval.py", "--combine", "a", "b", "--out", "both", cwd=tmp_path)
    note = "different versions of the gold judge (builtin_task.py crc32 0000aaaa, unrecorded)"
    assert note in proc.stdout and note in (tmp_path / "both/report.md").read_text()
    assert note in json.load(open(tmp_path / "both/results.json"))["notes"][0]
    with pytest.raises(AssertionError, match="--bootstrap: nothing to do with --combine"):
        run_stage("06_eval.py", "--combine", "a", "b", "--out", "both2", "--bootstrap", 100, cwd=tmp_path)


def test_combine_errors(tmp_path):
    fake_eval(tmp_path / "a", 0, {"01_sft": [0, 1], "05_ppo": [1, 1]}, {"01_sft": [0, 0], "05_ppo": [0, 0]}, ["x", "y"])
    proc = run_stage("06_eval.py", "--combine", "a", "missing", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "missing: no finished 06_eval output" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    # two policies sampled on different prompts cannot be paired
    (tmp_path / "b").mkdir()
    rows = [{"policy": "05_ppo", "prompt": "x", "gold": 1, "rm": 0}, {"policy": "04_dpo_all", "prompt": "z", "gold": 0, "rm": 0}]
    res = {"args": {"seed": 1, "samples_per_prompt": 1}, "n_prompts": 1, "dataset": {"name": "builtin"},
           "results": {n: {"gold": {"mean": g}, "rm": {"mean": 0}} for n, g in (("05_ppo", 1), ("04_dpo_all", 0))}}
    json.dump(res, open(tmp_path / "b/results.json", "w"))
    (tmp_path / "b/samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    shutil.copytree(tmp_path / "b", tmp_path / "b_copy")
    proc = run_stage("06_eval.py", "--combine", "b", "b_copy", cwd=tmp_path, check=False)   # a copy is no seed
    assert proc.returncode == 2 and "b_copy holds the same responses and results as b: a copy" in proc.stderr
    res["args"]["seed"], res["results"]["05_ppo"]["gold"]["mean"], rows[0]["gold"] = 2, 0, 0
    shutil.copytree(tmp_path / "b", tmp_path / "b2")
    json.dump(res, open(tmp_path / "b2/results.json", "w"))
    (tmp_path / "b2/samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    proc = run_stage("06_eval.py", "--combine", "b", "b2", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "not sampled on the same prompts" in proc.stderr
    assert not (tmp_path / "runs/combined").exists()


def test_combine_refuses_runs_evaluated_differently_one_run_flags_it_ignores_and_bad_records(tmp_path, capsys):
    ev = load_script("06_eval")
    gold = {"01_sft": [0, 1], "05_ppo": [1, 1]}
    rm = {"01_sft": [0.0, 0.0], "05_ppo": [0.0, 0.0]}
    for name, seed in (("a", 0), ("b", 1)):
        fake_eval(tmp_path / name, seed, gold, rm, ["x", "y"])
    combine = lambda *dirs, flags=(): ev.main(ev.parse_args(["--combine", *map(str, dirs), "--out",
                                                             str(tmp_path / "out"), *flags]))
    with pytest.raises(ev.UserError, match="--combine: one run; combining takes two or more"):
        combine(tmp_path / "a")
    for flags in (["--max-new-tokens", "8"], ["--reward", "rm"], ["--run", "x"], ["--device", "cpu"],
                  ["--bootstrap", "1000"], ["--seed", "0"]):   # the last two at their default values
        with pytest.raises(ev.UserError, match=f"{flags[0]}: nothing to do with --combine"):
            combine(tmp_path / "a", tmp_path / "b", flags=flags)
    record = json.load(open(tmp_path / "b/results.json"))
    for change, needle in (({"args": dict(record["args"], max_new_tokens=8)}, "--max-new-tokens is None in .* but 8"),
                           ({"baseline": "x/04_dpo"}, "the baseline is None in .*a but 04_dpo in .*b"),
                           ({"sft": "other/01_sft"}, "the RM's run is the baseline's in .*a but another run's"),
                           ({"args": None}, "not as 06_eval.py writes it"),
                           ({"results": {"05_ppo": "text"}}, "not as 06_eval.py writes it"),
                           ({"results": {"05_ppo": {"gold": {"mean": float("nan")}}}}, "05_ppo's gold has no finite"),
                           ({"dataset": {"name": ["a"]}}, "not as 06_eval.py writes it .a dataset name"),
                           ({"sweep": [5]}, "not as 06_eval.py writes it .a dataset name; sweep points"),
                           ({"n_prompts": None}, "n_prompts, the seed and samples per prompt are integers"),
                           ({"judge": ["x"]}, "n_prompts, the seed and samples per prompt are integers"),
                           ({"results": {**record["results"], "05_ppo": {"gold": {"mean": True}}}}, "05_ppo's gold has no finite"),
                           ({"results": {**record["results"], "05_ppo": {**record["results"]["05_ppo"], "kl": 5}}},
                            "05_ppo's kl has no finite")):
        json.dump({**record, **change}, open(tmp_path / "b/results.json", "w"))
        with pytest.raises(ev.UserError, match=needle):
            combine(tmp_path / "a", tmp_path / "b")
    json.dump(record, open(tmp_path / "b/results.json", "w"))
    samples = (tmp_path / "b/samples.jsonl").read_text()
    for row in ('{"prompt": "x", "rm": 0.0}', '{"policy": "05_ppo", "prompt": "x", "rm": "high"}',
                '{"policy": "05_ppo", "prompt": "x", "rm": 0.0}', '{"policy": "05_ppo", "prompt": ["x"], "rm": 0.0, "gold": 1}',
                '{"policy": "05_ppo", "prompt": "x", "rm": NaN, "gold": 1}', '{"policy": "05_ppo", "prompt": "x", "rm": true, "gold": 1}'):
        (tmp_path / "b/samples.jsonl").write_text(samples + row + "\n")   # (these runs have gold: a row needs it)
        with pytest.raises(ev.UserError, match="samples.jsonl: row 5 is not as 06_eval.py writes it"):
            combine(tmp_path / "a", tmp_path / "b")
    (tmp_path / "b/samples.jsonl").write_text("".join(samples.splitlines(keepends=True)[:3]))   # cut short
    with pytest.raises(ev.UserError, match="samples.jsonl: 1 samples of 05_ppo, not the 2 results.json counts"):
        combine(tmp_path / "a", tmp_path / "b")
    (tmp_path / "b/samples.jsonl").write_text(samples)
    record["results"]["05_ppo"]["gold_sorting"] = {"mean": 1.0}      # a family only one run has prompts of
    json.dump(record, open(tmp_path / "b/results.json", "w"))
    combine(tmp_path / "a", tmp_path / "b")
    assert "left out, not in every run's results: gold_sorting" in capsys.readouterr().out
    with pytest.raises(ev.UserError, match="also an input of this stage"):   # its own input replaced
        ev.main(ev.parse_args(["--combine", str(tmp_path / "a"), str(tmp_path / "b"), "--out",
                               str(tmp_path / "a"), "--overwrite"]))


def test_combine_reads_training_seeds_budgets_and_means_that_agree_with_the_samples(tmp_path, capsys):
    """Three ways a combined report said what was not so: 06's own --seed taken for the training seed (one
    training evaluated twice passed for two seeds, two trainings of seeds 0 and 1 evaluated with one 06 seed
    were said to share it); budgets that differ between the runs; a results.json whose means are not those of
    the samples.jsonl beside it, which the claims are computed from."""
    ev = load_script("06_eval")
    names = ("01_sft", "04_dpo", "04_dpo_all", "05_ppo")
    for run, train_seed, steps in (("a", 0, 3), ("b", 1, 12)):
        fake_eval(tmp_path / run, 0, {n: [0, 1, train_seed] for n in names}, {n: [0.0, 1.0, 2.0] for n in names},
                  ["x", "y", "z"])
        res = json.load(open(tmp_path / run / "results.json"))
        for n in names:   # as 06 records them: each policy's training seed and budget
            res["results"][n].update(train_seed=train_seed, budget="4 SFT steps" if n == "01_sft" else
                                     f"{(k := steps if n == '04_dpo_all' else 3)} steps x 8 pairs = {8 * k} pairs, 0.4 epochs")
        json.dump(res, open(tmp_path / run / "results.json", "w"))
    combine = lambda *dirs: ev.main(ev.parse_args(["--combine", *map(str, dirs), "--out", str(tmp_path / "c"),
                                                   "--overwrite"]))
    combine(tmp_path / "a", tmp_path / "b")
    out, report = capsys.readouterr().out, (tmp_path / "c/report.md").read_text()
    assert json.load(open(tmp_path / "c/results.json"))["seeds"] == [0, 1] and "seeds 0, 1" in report
    assert "same seeds" not in out
    assert ("budgets differ between the runs for 04_dpo_all (3 steps x 8 pairs = 24 pairs / 12 steps x 8 pairs = 96 pairs): their "
            "spread, and the claims on them, are partly the budgets'") in report
    res = json.load(open(tmp_path / "b/results.json"))
    for n, v in (("train_seed", 1.5), ("budget", None), ("trained_in", 3)):   # damaged: one line, no traceback
        bad = json.loads(json.dumps(res))
        bad["results"]["05_ppo"][n] = v
        json.dump(bad, open(tmp_path / "b/results.json", "w"))
        if v is None:
            combine(tmp_path / "a", tmp_path / "b")
        else:
            with pytest.raises(ev.UserError, match=f"b/results.json: 05_ppo's {n} is not as 06_eval.py writes it"):
                combine(tmp_path / "a", tmp_path / "b")
    for run in ("a", "b"):   # one folder evaluated in both: the same training if trained with the same seed
        r = json.load(open(tmp_path / run / "results.json"))
        r["results"]["04_dpo"].update(trained_in="/runs/x/04_dpo", train_seed=0)
        r["results"]["05_ppo"].update(trained_in=None)             # a hub model: no training of ours
        json.dump(r, open(tmp_path / run / "results.json", "w"))
    with pytest.raises(ev.UserError, match=r"evaluate the same trained policy \(/runs/x/04_dpo, trained with seed 0\)"):
        combine(tmp_path / "a", tmp_path / "b")
    r["results"]["04_dpo"]["train_seed"] = 1                       # the folder trained again since, another seed
    json.dump(r, open(tmp_path / "b/results.json", "w"))
    combine(tmp_path / "a", tmp_path / "b")
    res = json.load(open(tmp_path / "b/results.json"))
    res["results"]["05_ppo"]["rm"]["mean"] = 9.99                       # edited by hand
    json.dump(res, open(tmp_path / "b/results.json", "w"))
    with pytest.raises(ev.UserError, match=r"b/results.json: 05_ppo's rm mean 9.99 is not that of its samples.jsonl "
                                           r"\(1\): one was edited, or comes from another evaluation"):
        combine(tmp_path / "a", tmp_path / "b")
    res["results"]["05_ppo"]["rm"]["mean"] = 1.0
    for n in names:   # the win and tie rates samples.jsonl gives (the same gold as the baseline's: all ties)
        res["results"][n].update(win_gold={"mean": 0.5}, tie_gold={"mean": 1.0}, eos={"mean": 1.0})
    json.dump(res, open(tmp_path / "b/results.json", "w"))
    combine(tmp_path / "a", tmp_path / "b")
    for m, v, said in (("win_gold", 0.99, "05_ppo's win_gold mean 0.99 is not that of its samples.jsonl \\(0.5\\)"),
                       ("tie_gold", 0.0, "05_ppo's tie_gold mean 0 is not that of its samples.jsonl \\(1\\)"),
                       ("eos", 1.5, "05_ppo's eos mean 1.5 is not a rate in \\[0, 1\\]"),
                       ("length", -2, "05_ppo's length mean -2 is not a length")):
        bad = json.loads(json.dumps(res))
        bad["results"]["05_ppo"][m] = {"mean": v}          # a win of 0.99 beside 100% ties was printed as it was
        json.dump(bad, open(tmp_path / "b/results.json", "w"))
        with pytest.raises(ev.UserError, match="b/results.json: " + said + ": one was edited"):
            combine(tmp_path / "a", tmp_path / "b")
    point = {"point": "threshold 1", "threshold": 1, "easy": 5, "hard": 5, "easy_label_noise": 0.1,
             "hard_label_noise": None, "dpo": "04_dpo", "mpo": "05_ppo"}
    for change in ({"easy_label_noise": "x"}, {"dpo": "04_nope"}, {"mpo": 3}):   # a TypeError in the sweep's means
        json.dump({**res, "sweep": [point, {**point, "point": "threshold 2", **change}]},
                  open(tmp_path / "b/results.json", "w"))
        with pytest.raises(ev.UserError, match="b/results.json: not as 06_eval.py writes it .* sweep points with a "
                                               "name, a threshold, set sizes, label noise or null, and their DPO"):
            combine(tmp_path / "a", tmp_path / "b")


def test_bootstrap_resamples_whole_requests():
    ev = load_script("06_eval")
    # two requests: one asked in three wordings (all 0), one in one (1). Resampling requests, each resample is
    # {A, A}: 0, {B, B}: 1, or {A, B}: (0 + 0 + 0 + 1) / 4 = 0.25 -- never the 0.5 or 0.75 of prompt-level resamples
    values, requests = [0.0, 0.0, 0.0, 1.0], ["a", "a", "a", "b"]
    assert ev.clusters_of(values, requests) == [[0.0, 0.0, 0.0], [1.0]]
    lo, hi = ev.bootstrap_ci(ev.clusters_of(values, requests), 400, seed=0)
    assert lo == 0.0 and hi == 1.0
    s = ev.summarise(values, requests, 400, 0)
    assert s["mean"] == 0.25 and s["requests"] == 2
    # one value per request: the ordinary bootstrap over prompts, narrower here
    lo1, hi1 = ev.bootstrap_ci([[v] for v in values], 400, seed=0)
    assert 0.0 <= lo1 and hi1 <= 0.75 and (lo1, hi1) != (lo, hi)


def test_budget_of_reads_each_stage_json(tmp_path):
    ev = load_script("06_eval")
    d = tmp_path / "dpo"
    d.mkdir()
    json.dump({"stage": "04_dpo", "args": {"online": False}, "data": {"split": "easy"},
               "final": {"steps": 25, "pairs_per_step": 8, "n_pairs": 400, "epochs_seen": 0.5}}, open(d / "stage.json", "w"))
    assert ev.budget_of(d) == "25 steps x 8 pairs = 200 pairs, 0.50 epochs of 400 easy pairs"
    ppo = tmp_path / "ppo"
    ppo.mkdir()
    json.dump({"stage": "05_ppo", "args": {"steps": 8, "rollout_batch": 8}, "n_prompts": 256, "prompts": "hard",
               "policy_init": str(d)}, open(ppo / "stage.json", "w"))
    assert ev.budget_of(ppo) == ("8 iterations x 8 rollouts = 64 rollouts, 0.25 epochs of 256 hard prompts; "
                                 "after dpo (25 steps x 8 pairs = 200 pairs, 0.50 epochs of 400 easy pairs)")


def test_requests_of_rows_without_one_and_runs_of_two_versions(tmp_path):
    ev = load_script("06_eval")
    prompt = [{"role": "user", "content": "x"}]
    assert ev.request_of({"prompt": prompt, "meta": {"request": 7}}) == "7"
    for meta in (None, "text", {}, {"request": None}):             # local files may carry any "meta" column
        assert ev.request_of({"prompt": prompt, "meta": meta}) == ev.json.dumps(prompt)
    assert ev.request_of({"prompt": prompt}) == ev.json.dumps(prompt)
    # a run with per-family gold scores combined with one without: only what both have is tabled
    fake_eval(tmp_path / "a", 0, {"01_sft": [0, 1], "05_ppo": [1, 1]}, {"01_sft": [0, 0], "05_ppo": [0, 1]}, ["x", "y"])
    fake_eval(tmp_path / "b", 1, {"01_sft": [0, 1], "05_ppo": [1, 0]}, {"01_sft": [0, 0], "05_ppo": [0, 1]}, ["x", "y"])
    res = ev.json.load(open(tmp_path / "a/results.json"))
    for r in res["results"].values():
        r["gold_harmful"] = {"mean": 0.5}
    ev.json.dump(res, open(tmp_path / "a/results.json", "w"))
    run_stage("06_eval.py", "--combine", "a", "b", "--out", "both", cwd=tmp_path)
    assert "gold_harmful" not in ev.json.load(open(tmp_path / "both/results.json"))["policies"]["05_ppo"]


def test_claims_check_each_policy_is_what_its_name_says(tmp_path, capsys):
    """The claims find policies by run.sh's names; a directory of that name trained otherwise (its
    stage.json) is not compared as if it were, and policy_role reads what each is."""
    ev = load_script("06_eval")
    def stage(name, **st):
        (tmp_path / name).mkdir()
        json.dump(st, open(tmp_path / name / "stage.json", "w"))
        return str(tmp_path / name)
    split, other = (Path(stage(n, stage="03_split")) for n in ("03_split", "03_split_x"))
    for s in (split, other):
        (s / "stage.json").rename(s / "stats.json")
    sft = stage("01_sft", stage="01_sft")
    easy = stage("04_dpo", stage="04_dpo", args={"loss": "dpo"}, data={"split": "easy", "from": str(split)})
    stage("04_dpo_all", stage="04_dpo", args={"loss": "dpo"}, data={"split": "all"})
    stage("04_ipo", stage="04_dpo", args={"loss": "ipo"}, data={"split": "easy"})
    stage("04_ipo_md", stage="04_dpo", args={"online": True, "loss": "ipo", "mixture_beta": 0.125})
    mpo = {"stage": "05_ppo", "prompts": "hard", "split": str(split), "args": {"kl_coef": 0.05}}
    stage("05_ppo", **mpo, policy_init=easy, ref=easy)
    stage("05_ppo_sftref", **mpo, policy_init=easy, ref=sft)
    stage("05_ppo_vanilla", stage="05_ppo", prompts="all", policy_init=sft, ref=sft)
    stage("05_ppo_odd", stage="05_ppo", prompts="all", policy_init=easy, ref=easy)
    # the hard prompts of another split than the DPO start's easy pairs, or no KL term: no MPO (was 'mpo')
    stage("05_ppo_x", **{**mpo, "split": str(other)}, policy_init=easy, ref=easy)
    stage("05_ppo_kl0", **{**mpo, "args": {"kl_coef": 0}}, policy_init=easy, ref=sft)
    roles = {d.name: ev.policy_role(d) for d in tmp_path.iterdir() if not d.name.startswith("03")}
    assert roles == {"01_sft": "sft", "04_dpo": "dpo", "04_dpo_all": "dpo_all", "04_ipo": None, "04_ipo_md": "ipo_md",
                     "05_ppo": "mpo", "05_ppo_sftref": "mpo_sftref", "05_ppo_vanilla": "ppo", "05_ppo_odd": None,
                     "05_ppo_x": None, "05_ppo_kl0": None}
    # --combine: run b's "04_dpo_all" is offline IPO: the two claims against it are left out, the others stay
    for run, seed in (("a", 0), ("b", 1)):
        names = ("01_sft", "04_dpo", "04_dpo_all", "05_ppo")
        fake_eval(tmp_path / run, seed, {n: [0, 1] for n in names}, {n: [0.0, 1.0] for n in names}, ["x", "y"])
        res = json.load(open(tmp_path / run / "results.json"))
        for n in names:
            res["results"][n]["role"] = {"04_dpo_all": None if run == "b" else "dpo_all"}.get(n, ev.ROLE_OF_NAME[n])
        json.dump(res, open(tmp_path / run / "results.json", "w"))
    proc = run_stage("06_eval.py", "--combine", "a", "b", "--out", "both", cwd=tmp_path)
    assert ("'MPO beats vanilla DPO' left out: by its stage.json, in b, 04_dpo_all is another kind, not dpo_all"
            in proc.stdout)
    assert json.load(open(tmp_path / "both/results.json"))["claims"] == []
    assert "'MPO beats vanilla DPO' left out" in (tmp_path / "both/report.md").read_text()   # said there too


def test_a_policy_whose_record_names_itself_has_no_role(tmp_path):
    ev = load_script("06_eval")
    (tmp_path / "05_ppo").mkdir()
    json.dump({"stage": "05_ppo", "policy_init": str(tmp_path / "05_ppo"), "ref": str(tmp_path / "05_ppo"),
               "prompts": "hard"}, open(tmp_path / "05_ppo/stage.json", "w"))
    assert ev.policy_role(tmp_path / "05_ppo") is None      # not a RecursionError


def test_a_policy_not_in_every_run_is_left_out_with_a_note_and_a_run_folder_is_no_policy(tmp_path, capsys):
    ev = load_script("06_eval")
    fake_eval(tmp_path / "a", 0, {"01_sft": [0, 1], "05_ppo": [1, 1], "04_ipo": [0, 0]},
              {n: [0.0, 1.0] for n in ("01_sft", "05_ppo", "04_ipo")}, ["x", "y"])
    fake_eval(tmp_path / "b", 1, {"01_sft": [1, 1], "05_ppo": [0, 1]}, {n: [1.0, 0.0] for n in ("01_sft", "05_ppo")},
              ["x", "y"])
    ev.main(ev.parse_args(["--combine", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "c")]))
    assert "policies not in every run are left out, with the claims on them: 04_ipo" in capsys.readouterr().out
    assert "Left out, not in every run: 04_ipo." in (tmp_path / "c/report.md").read_text()
    (tmp_path / "runs/t0/01_sft").mkdir(parents=True)     # forgetting --combine: a run's folder as a policy
    with pytest.raises(ev.UserError, match="runs/t0: a run's folder, not a policy; name its policies"):
        ev.main(ev.parse_args([str(tmp_path / "runs/t0")]))


def test_a_bound_near_zero_shows_its_side():
    ev = load_script("06_eval")
    assert ev.claim_interval({"lo": 0.0002, "hi": 0.05}) == "[+2.0e-04, +0.050]"   # 'reproduced', not '[+0.000'
    assert ev.claim_interval({"lo": -0.0002, "hi": 0.0}) == "[-2.0e-04, +0.000]"
