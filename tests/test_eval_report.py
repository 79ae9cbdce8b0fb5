"""06_eval.py's report on constructed results: tie shares beside win rates, no interval from too few
requests, and each claim's verdict computed from its interval."""
import argparse

from conftest import load_script, run_stage

ev = load_script("06_eval")


def summaries(gold, base_gold, families, requests=None):
    """policy_summary of one policy against a baseline, one sample per prompt (rm = gold)."""
    requests = requests or [str(i) for i in range(len(gold))]
    rows = [{"family": f} for f in families]
    values = lambda g: {"rm": g, "gold": g, "kl": [0.0] * len(g), "length": [1] * len(g), "eos": [1.0] * len(g),
                        "refusal": [0.0] * len(g)}
    return ev.policy_summary(values(gold), values(base_gold), rows, requests, 1, 200, 0)


def report(results, tmp_path, families, notes=()):
    args = argparse.Namespace(samples_per_prompt=1, seed=0, max_new_tokens=8)
    return ev.write_report(results, tmp_path, args, {"name": "builtin"}, "rm", 4, 4, families, [],
                           notes)


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
    assert "baseline `05_ppo`" in text   # the table's name for it (the header had the folder's last part)
    assert "baseline `/tmp/m1`" in report({"/tmp/m1": res}, tmp_path, [])
    # results.json written before ties were recorded: the win rate alone
    assert ev.with_ties("0.500", {"win_rm": {"mean": 0.5}}, "win_rm") == "0.500"
    assert ev.with_ties("0.100", res, "gold") == "0.100"


def test_combined_report_shows_tie_shares(tmp_path):
    from test_combine import fake_eval
    for run, seed, gold, tie in (("a", 0, [0, 1, 1, 0], 0.5), ("b", 1, [0, 1, 0, 1], 1.0)):   # wins 0.5 both
        fake_eval(tmp_path / run, seed, {"01_sft": [0, 1, 0, 1], "05_ppo": gold},
                  {"01_sft": [0, 0, 0, 0], "05_ppo": [0, 1, 0, 1]}, ["w", "x", "y", "z"])
        res = ev.json.load(open(tmp_path / run / "results.json"))   # the rates its samples give (check_means)
        res["results"]["01_sft"].update(win_gold={"mean": 0.5}, tie_gold={"mean": 1.0})
        res["results"]["05_ppo"].update(win_gold={"mean": 0.5}, tie_gold={"mean": tie})
        ev.json.dump(res, open(tmp_path / run / "results.json", "w"))
    run_stage("06_eval.py", "--combine", "a", "b", "--out", "both", cwd=tmp_path)
    assert "| 0.500 ± 0.000 (ties 75%) |" in (tmp_path / "both/report.md").read_text()


def test_few_requests_give_no_interval_and_each_family_its_n(tmp_path):
    # family "big": MIN_REQUESTS requests; "one": a single request asked in two wordings
    big = ev.MIN_REQUESTS
    families, requests = ["big"] * big + ["one"] * 2, [str(i) for i in range(big)] + ["r", "r"]
    res = summaries([1.0] * (big + 2), [0.0] * (big + 2), families, requests)
    assert (res["gold_one"]["lo"], res["gold_one"]["hi"], res["gold_one"]["requests"]) == (None, None, 1)   # as in
    assert res["gold_big"]["lo"] == res["gold_big"]["hi"] == 1.0                                   # the report
    res["budget"] = "?"
    text = report({"05_ppo": res}, tmp_path, ["big", "one"])
    assert f"| policy | big (n={big}) | one (n=1) |" in text
    assert "| 05_ppo | 1.000 [1.000, 1.000] | 1.000 (n=1, no interval) |" in text
    assert f"none from fewer than {big} requests" in text
    assert ev.interval_cell({"mean": 0.5, "lo": 0.4, "hi": 0.6}) == "0.500 [0.400, 0.600]"   # older results
    assert ev.interval_cell({"mean": -1e-9, "lo": -0.0, "hi": 0.1}) == "0.000 [0.000, 0.100]"   # a KL's rounding
    assert ev.n_label([3, 5]) == " (n=3-5)" and ev.n_label([None]) == ""


def test_combined_claims_from_few_requests_print_no_interval(tmp_path):
    from test_combine import fake_eval
    for run, seed in (("a", 0), ("b", 1)):
        fake_eval(tmp_path / run, seed, {"05_ppo": [1, 1, 0], "04_dpo_all": [0, 1, 0]},
                  {"05_ppo": [0, 0, 0], "04_dpo_all": [0, 0, 0]}, ["x", "y", "z"])
        res = ev.json.load(open(tmp_path / run / "results.json"))
        for r in res["results"].values():
            r["gold_harmful"] = {"mean": 0.5, "requests": 2 + seed}
        ev.json.dump(res, open(tmp_path / run / "results.json", "w"))
    run_stage("06_eval.py", "--combine", "a", "b", "--out", "both", cwd=tmp_path)
    report = (tmp_path / "both/report.md").read_text()
    assert "| harmful (n=2-3) |" in report
    assert "| +0.333 | n too small (n=3 in a run) |" in report
    assert ev.json.load(open(tmp_path / "both/results.json"))["claims"][0]["requests"] == 3


def test_verdict_rule():
    n = ev.MIN_REQUESTS
    assert ev.verdict(0.01, 0.2, "beats", n) == "reproduced"
    assert ev.verdict(-0.2, -0.01, "beats", n) == "contradicted"
    assert ev.verdict(-0.1, 0.1, "beats", n) == "not reproduced (interval includes zero)"
    assert ev.verdict(0.0, 0.0, "beats", n) == "not reproduced (interval includes zero)"   # zero is not above zero
    assert ev.verdict(-0.1, 0.1, "at least", n) == "not contradicted (interval includes zero)"
    assert ev.verdict(-0.2, -0.01, "at least", n) == "contradicted"
    assert ev.verdict(0.5, 0.9, "beats", n - 1) == "no verdict (n too small)"


def test_combined_claims_carry_computed_verdicts(tmp_path):
    from test_combine import fake_eval
    n = ev.MIN_REQUESTS + 2
    alternate = [0.0, 0.2] * (n // 2)                   # 0.1 on average, +-0.1 from it prompt by prompt
    gold = {"05_ppo": [0.6] * n, "04_dpo_all": [0.1] * n, "05_ppo_vanilla": [0.9] * n, "04_dpo": alternate,
            "04_ipo_md": alternate, "04_nash_md_pg": [0.1] * n}
    for run, seed in (("a", 0), ("b", 1)):
        fake_eval(tmp_path / run, seed, gold, {p: [0.0] * n for p in gold}, [f"{run}{i}" for i in range(n)])
    run_stage("06_eval.py", "--combine", "a", "b", "--out", "both", cwd=tmp_path)
    report = (tmp_path / "both/report.md").read_text()
    row = lambda claim, metric: next(l for l in report.splitlines() if l.startswith(f"| {claim} |")
                                     and f"| {metric} |" in l)
    assert row("MPO beats vanilla DPO", "gold").endswith("| 2/2 | reproduced |")
    assert row("MPO beats vanilla PPO", "gold").endswith("| 0/2 | contradicted |")
    assert row("DPO on the easy set beats DPO on all pairs", "gold").endswith("| not reproduced (interval includes zero) |")
    assert row("IPO-MD at least as good as Nash-MD-PG", "gold").endswith("| not contradicted (interval includes zero) |")
    assert row("MPO beats vanilla DPO", "rm").endswith("| not reproduced (interval includes zero) |")  # equal RM scores
    assert ev.VERDICT_RULE in report
    claims = ev.json.load(open(tmp_path / "both/results.json"))["claims"]
    assert {c["verdict"] for c in claims if c["metric"] == "gold" and c["policy"] == "05_ppo"} == {"reproduced", "contradicted"}


def test_responses_are_judged_as_sampled_without_the_tokenizers_clean_up():
    # a word-level tokenizer whose config asks for clean-up, which transformers applies to such tokenizers
    # (it skips it for BPE): "42 ." would reach the judge as "42." and "it 's" as "it's"
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    vocab = {w: i for i, w in enumerate(["<unk>", "<|im_end|>", "The", "answer", "is", "42", ".", "it", "'s", "!"])}
    words = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=words, unk_token="<unk>", eos_token="<|im_end|>",
                                  clean_up_tokenization_spaces=True)
    ids = [vocab[w] for w in ["The", "answer", "is", "42", ".", "it", "'s", "!", "<|im_end|>"]]
    assert tok.decode(ids, skip_special_tokens=True) == "The answer is 42. it's!"   # what the config would do
    assert ev.response_texts(tok, [ids]) == ["The answer is 42 . it 's !"]


def test_06_s_notes_reach_report_md_and_test_prompts_that_are_training_prompts_are_noted(tmp_path, capsys):
    """The notes 06 printed (a policy not trained from the baseline, an input remade since) were not in
    report.md; a --data file of the SFT model's own training prompts was reported as test prompts in silence."""
    res = summaries([1.0, 0.0], [0.0, 0.0], ["a"] * 2)
    res["budget"] = "?"
    assert "Note: x was trained from y as it was then." in report({"05_ppo": res}, tmp_path, [],
                                                                  ["x was trained from y as it was then"])
    sft_dir = tmp_path / "01_sft"
    sft_dir.mkdir()
    train = [{"prompt": [{"role": "user", "content": p}], "chosen": "a", "rejected": "b"} for p in ("p1", "p2")]
    ev.write_jsonl(sft_dir / "data_train.jsonl", train)
    test = [{"prompt": [{"role": "user", "content": p}]} for p in ("p2", "p3", "p4")]
    assert ev.trained_on(test, sft_dir, "mine.jsonl") == [
        f"1 of the 3 test prompts of mine.jsonl are training prompts of {sft_dir} (its data_train.jsonl): there the "
        f"scores say what the policies were shown, not what they learnt"]
    assert "06_eval: note: 1 of the 3 test prompts" in capsys.readouterr().out
    assert ev.trained_on(test[1:], sft_dir, "mine.jsonl") == [] and ev.trained_on(test, None, "mine.jsonl") == []
