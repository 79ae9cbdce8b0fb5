"""06_eval.py's report on constructed results: tie shares beside win rates, no interval from too few
requests, and each claim's verdict computed from its interval."""
import argparse
from pathlib import Path

from conftest import load_script, run_stage

ev = load_script("06_eval")


def summaries(gold, base_gold, families, requests=None):
    """policy_summary of one policy against a baseline, one sample per prompt (rm = gold)."""
    requests = requests or [str(i) for i in range(len(gold))]
    rows = [{"family": f} for f in families]
    values = lambda g: {"rm": g, "gold": g, "kl": [0.0] * len(g), "length": [1] * len(g), "eos": [1.0] * len(g),
                        "refusal": [0.0] * len(g)}
    return ev.policy_summary(values(gold), values(base_gold), rows, requests, 1, 200, 0)


def report(results, tmp_path, families):
    args = argparse.Namespace(samples_per_prompt=1, seed=0, max_new_tokens=8)
    return ev.write_report(results, tmp_path, args, {"name": "builtin"}, "rm", Path("01_sft"), 4, 4, families, [])


def test_tie_share_beside_each_win_rate(tmp_path):
    assert ev.ties([1.0, 0.5, 0.0, 0.2], [1.0, 0.0, 0.0, 0.3]) == [1.0, 0.0, 1.0, 0.0]
    # three ties and one win: a win rate of 0.625 that is 75% ties
    res = summaries([0.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.5], ["a"] * 4)
    assert res["win_gold"]["mean"] == 0.625 and res["tie_gold"]["mean"] == 0.75 and res["tie_rm"]["mean"] == 0.75
    res["budget"] = "?"
    text = report({"05_ppo": res}, tmp_path, [])
    row = next(l for l in text.splitlines() if l.startswith("| 05_ppo |"))
    assert row.count("(ties 75%)") == 2                          # gold and RM win rates, not the other cells
    assert "share of its comparisons that tied" in text
    # results.json written before ties were recorded: the win rate alone
    assert ev.with_ties("0.500", {"win_rm": {"mean": 0.5}}, "win_rm") == "0.500"
    assert ev.with_ties("0.100", res, "gold") == "0.100"


def test_combined_report_shows_tie_shares(tmp_path):
    from test_combine import fake_eval
    for run, seed, tie in (("a", 0, 0.7), ("b", 1, 0.8)):
        fake_eval(tmp_path / run, seed, {"01_sft": [0, 1], "05_ppo": [1, 1]}, {"01_sft": [0, 0], "05_ppo": [0, 1]},
                  ["x", "y"])
        res = ev.json.load(open(tmp_path / run / "results.json"))
        for r in res["results"].values():
            r.update(win_gold={"mean": 0.5}, tie_gold={"mean": tie})
        ev.json.dump(res, open(tmp_path / run / "results.json", "w"))
    run_stage("06_eval.py", "--combine", "a", "b", "--out", "both", "--bootstrap", 20, cwd=tmp_path)
    assert "| 0.500 ± 0.000 (ties 75%) |" in (tmp_path / "both/report.md").read_text()
