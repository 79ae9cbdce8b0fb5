"""The real-data loaders of 01_sft.py, on small files written here in each format: HH-RLHF dialogues,
TL;DR comparisons (prompt/chosen/rejected with 'TL;DR:'), openai/summarize_from_feedback rows, and
a generic prompt/chosen/rejected file."""

import copy
import gzip
import json
import os

import pytest

from conftest import load_script, run_in_process, run_stage

sft = load_script("01_sft")


def hh(turns):
    return "".join(f"\n\n{role}: {text}" for role, text in turns)


PREFIX = [("Human", "Hi there"), ("Assistant", "Hello! How can I help?"), ("Human", "What is 2+2?")]
HH_ROWS = [
    {"chosen": hh(PREFIX + [("Assistant", "It is 4.")]), "rejected": hh(PREFIX + [("Assistant", "5, I think.")])},
    {"chosen": hh([("Human", "Ça va? Écris «bonjour» 🙂"), ("Assistant", "Bonjour! 🙂")]),
     "rejected": hh([("Human", "Ça va? Écris «bonjour» 🙂"), ("Assistant", "Non.")])},
    {"chosen": hh([("Human", "first"), ("Assistant", ""), ("Human", "still there?"), ("Assistant", "Yes.")]),
     "rejected": hh([("Human", "first"), ("Assistant", ""), ("Human", "still there?"), ("Assistant", "No.")])},
    # malformed: the dialogues before the last reply differ
    {"chosen": hh([("Human", "A"), ("Assistant", "x")]), "rejected": hh([("Human", "B"), ("Assistant", "y")])},
    # ends on a Human turn
    {"chosen": hh([("Human", "A"), ("Assistant", "x"), ("Human", "ok")]),
     "rejected": hh([("Human", "A"), ("Assistant", "y"), ("Human", "ok")])},
    # empty final response
    {"chosen": hh([("Human", "A"), ("Assistant", "")]), "rejected": hh([("Human", "A"), ("Assistant", "y")])},
]


def write(path, rows):
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wt", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    return path


def test_hh_parsing_multi_turn_unicode_empty_turns_and_skips(capsys):
    rows = sft.normalise(HH_ROWS, "hh.jsonl")
    assert len(rows) == 3
    r0 = rows[0]
    assert r0["prompt"] == [{"role": "user", "content": "Hi there"},
                            {"role": "assistant", "content": "Hello! How can I help?"},
                            {"role": "user", "content": "What is 2+2?"}]
    assert (r0["chosen"], r0["rejected"]) == ("It is 4.", "5, I think.")
    assert rows[1]["prompt"][0]["content"] == "Ça va? Écris «bonjour» 🙂" and rows[1]["chosen"] == "Bonjour! 🙂"
    assert rows[2]["prompt"][1] == {"role": "assistant", "content": ""}       # an empty turn is kept
    out = capsys.readouterr().out
    assert "hh-rlhf format, 3 rows kept" in out
    for reason in ("1 (chosen and rejected do not share the dialogue before the last reply; first: row 4)",
                   "1 (ends on a Human turn; first: row 5)", "1 (empty response; first: row 6)"):
        assert reason in out


def test_tldr_and_generic_and_summarize_from_feedback():
    tldr = sft.normalise([{"prompt": "SUBREDDIT: r/cats\nTITLE: My cat\nPOST: She sleeps all day.\nTL;DR:",
                           "chosen": "TL;DR: cat sleeps a lot", "rejected": " TL;DR: cats"}], "tldr.jsonl")
    assert tldr[0]["prompt"] == [{"role": "user", "content": "SUBREDDIT: r/cats\nTITLE: My cat\nPOST: She sleeps "
                                                             "all day.\nTL;DR:"}]
    assert (tldr[0]["chosen"], tldr[0]["rejected"]) == ("cat sleeps a lot", "cats")
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    gen = sft.normalise([{"prompt": msgs, "chosen": "Hello.", "rejected": "Go away.", "id": 7}], "g.jsonl")
    assert gen[0]["prompt"] == msgs and gen[0]["id"] == 7
    sff = sft.normalise([{"info": {"post": "Long post.", "title": "T", "subreddit": "r"},
                          "summaries": [{"text": " short"}, {"text": " better"}], "choice": 1}], "s.jsonl")
    assert sff[0]["chosen"] == "better" and sff[0]["rejected"] == "short"
    assert sff[0]["prompt"][0]["content"].endswith("POST: Long post.\nTL;DR:")


def test_unknown_columns_and_missing_columns_are_clear_errors():
    with pytest.raises(sft.UserError, match=r"columns \['answer', 'question'\] fit no known format; expected"):
        sft.normalise([{"question": "q", "answer": "a"}], "x.jsonl")
    with pytest.raises(sft.UserError, match=r"row 2 is missing \['chosen'\]"):
        sft.normalise([{"prompt": "p", "chosen": "a", "rejected": "b"}, {"prompt": "p", "rejected": "b"}], "x.jsonl")
    row = {"prompt": "p", "chosen": "a", "rejected": "b"}
    with pytest.raises(sft.UserError, match=r"row 2 is not a JSON object"):
        sft.normalise([row, [row]], "x.jsonl")
    gold = dict(row, gold_chosen=1.0, gold_rejected=0)
    assert sft.normalise([gold, gold], "x.jsonl")[1]["gold_rejected"] == 0           # carried to 02 and 03
    for rows, bad in (([gold, row], 2), ([row, gold], 2), ([dict(row, gold_chosen=1.0)], 1),
                      ([gold, dict(gold, gold_rejected="low")], 2), ([dict(gold, gold_chosen=float("nan"))], 1),
                      ([dict(gold, gold_chosen=True)], 1)):
        with pytest.raises(sft.UserError, match=rf"row {bad}: gold_chosen and gold_rejected .* must be finite "
                                                r"numbers, in every row or in none"):
            sft.normalise(rows, "x.jsonl")


def test_chat_template_rendering(tiny):
    _, tok = tiny
    rows = sft.normalise(HH_ROWS[:1], "hh.jsonl")
    text = sft.render_prompt(tok, rows[0]["prompt"])
    assert text == ("<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\nHello! How can I help?<|im_end|>\n"
                    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n")

    class Plain:  # a tokenizer without a chat template gets plain text
        chat_template = None
    assert sft.render_prompt(Plain(), rows[0]["prompt"]).endswith("User: What is 2+2?\n\nAssistant:")


def make_hh_file(path, n=100):
    rows = []
    for i in range(n):
        pre = [("Human", f"Question number {i}: what is {i} + {i}?")]
        if i % 3 == 0:
            pre = [("Human", "Hello"), ("Assistant", "Hi! Ask me anything.")] + pre
        rows.append({"chosen": hh(pre + [("Assistant", f"It is {2 * i}.")]),
                     "rejected": hh(pre + [("Assistant", f"It is {2 * i + 1}, I think.")])})
    rows.append(HH_ROWS[3])  # one malformed row, skipped with a count
    return write(path, rows)


def make_tldr_file(path, n=100):
    rows = [{"prompt": f"SUBREDDIT: r/test\nTITLE: Post {i}\nPOST: Today I walked {i} km in the rain.\nTL;DR:",
             "chosen": f"TL;DR: walked {i} km in rain", "rejected": "TL;DR: something happened"} for i in range(n)]
    return write(path, rows)


@pytest.mark.parametrize("maker", [make_hh_file, make_tldr_file], ids=["hh-rlhf", "tldr"])
def test_pipeline_on_a_local_file_with_the_dataset_named_once(tmp_path, tiny_model_dir, maker):
    data = maker(tmp_path / ("data.jsonl.gz" if maker is make_hh_file else "data.jsonl"))
    proc = run_stage("01_sft.py", "--dataset", data, "--model", tiny_model_dir,
                     "--run", "r", "--max-steps", 2, cwd=tmp_path)
    assert "held out" in proc.stdout
    stage = json.load(open(tmp_path / "runs/r/01_sft/stage.json"))
    assert stage["dataset"]["name"] == str(data)
    test_rows = [json.loads(l) for l in open(tmp_path / "runs/r/01_sft/data_test.jsonl")]
    train_rows = [json.loads(l) for l in open(tmp_path / "runs/r/01_sft/data_train.jsonl")]
    assert test_rows and len(test_rows) + len(train_rows) == 100
    keys = lambda rows: {json.dumps(r["prompt"]) for r in rows}
    assert not keys(test_rows) & keys(train_rows)
    if maker is make_tldr_file:  # the stages after 01 read both forms alike; once is enough for the suite's time
        return
    # 02-06 with no dataset flag: they inherit it through the run directory (in this process: no start-up)
    run_in_process("02_reward.py", "--run", "r", "--max-steps", 2, cwd=tmp_path)
    run_in_process("03_split.py", "--run", "r", "--easy-fraction", 0.5, cwd=tmp_path)
    run_in_process("04_dpo.py", "--run", "r", "--max-steps", 2, cwd=tmp_path)
    run_in_process("05_ppo.py", "--run", "r", "--steps", 1, "--max-new-tokens", 6, cwd=tmp_path)
    run_in_process("06_eval.py", "--run", "r", "--max-new-tokens", 6, "--bootstrap", 100, cwd=tmp_path)
    results = json.load(open(tmp_path / "runs/r/06_eval/results.json"))
    assert set(results["results"]) == {"01_sft", "04_dpo", "05_ppo"}
    assert "gold" not in results["results"]["04_dpo"]            # no gold judge outside the built-in task
    assert "Note: no gold judge: the test rows are not the built-in task's" in (tmp_path / "runs/r/06_eval/report.md").read_text()


def test_hub_dataset_offline_is_a_one_line_error(tmp_path, tiny_model_dir):
    proc = run_stage("01_sft.py", "--dataset", "no-such-org/no-such-dataset", "--model", tiny_model_dir,
                     "--out", tmp_path / "x", cwd=tmp_path, check=False)
    assert proc.returncode == 2
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and "could not load" in err[0] and "no-such-org/no-such-dataset" in err[0]
    assert not (tmp_path / "x").exists()


class FakeHub:
    """datasets.load_dataset as the hub answers it: summarize_from_feedback's comparisons have train and
    validation splits and no test split; HH-RLHF's subsets are data folders."""
    def __init__(self):
        self.calls = []

    def __call__(self, path, split=None, **kw):
        self.calls.append((path, split, kw))
        if split == "test" and path == "openai/summarize_from_feedback":
            raise ValueError('Unknown split "test". Should be one of [\'train\', \'validation\'].')
        return [{"prompt": f"{split} prompt", "chosen": "a", "rejected": "b"}]


def test_hub_subsets_and_a_missing_test_split(monkeypatch, capsys):
    import datasets
    fake = FakeHub()
    monkeypatch.setattr(datasets, "load_dataset", fake)
    monkeypatch.setattr(sft, "hub_reachable", lambda: True)
    rows = sft.load_rows("openai/summarize_from_feedback:comparisons", "--dataset", "test")
    assert rows[0]["prompt"] == "validation prompt" and "using 'validation' as the test split" in capsys.readouterr().out
    assert fake.calls[-1] == ("openai/summarize_from_feedback", "validation", {"name": "comparisons"})
    sft.load_rows("Anthropic/hh-rlhf:helpful-base", "--dataset", "train")
    assert fake.calls[-1] == ("Anthropic/hh-rlhf", "train", {"data_dir": "helpful-base"})


def test_test_prompts_filtered_by_prompt_length_only_and_never_train_prompts(tmp_path, tiny_model_dir):
    train = [{"prompt": f"Question {i}?", "chosen": "Yes.", "rejected": "No."} for i in range(40)]
    long_answer = " ".join(["word"] * 200)                       # far over --max-response-len 32
    test = [{"prompt": f"Test question {i}?", "chosen": long_answer, "rejected": "No."} for i in range(6)]
    test += [{"prompt": "Question 3?", "chosen": "Yes.", "rejected": "No."}]        # also a train prompt
    test += [{"prompt": "Why? " * 100, "chosen": "Yes.", "rejected": "No."}]       # over --max-prompt-len
    write(tmp_path / "train.jsonl", train)
    write(tmp_path / "test.jsonl", test)
    proc = run_stage("01_sft.py", "--model", tiny_model_dir, "--dataset", tmp_path / "train.jsonl", "--test-dataset",
                     tmp_path / "test.jsonl", "--max-response-len", 32, "--max-prompt-len", 64, "--max-steps", 1,
                     "--run", "f", cwd=tmp_path)
    kept = [json.loads(l)["prompt"][-1]["content"] for l in open(tmp_path / "runs/f/01_sft/data_test.jsonl")]
    assert kept == [f"Test question {i}?" for i in range(6)]      # long references stay: no bias to short ones
    assert "dropped 1 test rows whose prompt is also a train prompt" in proc.stdout
    assert "dropped 1 of 7 rows with a prompt longer than 64 tokens" in proc.stdout


def test_malformed_rows_are_skipped_with_a_reason_not_a_traceback(capsys):
    rows = [{"prompt": [{"content": "no role"}], "chosen": "a", "rejected": "b"},      # a message without role
            {"prompt": "fine", "chosen": "a", "rejected": "b"}]
    assert len(sft.normalise(rows, "m.jsonl")) == 1
    assert "1 (prompt is neither text nor a list of chat messages with role and content; first: row 1)" in capsys.readouterr().out
    hh_rows = [{"chosen": ["not", "text"], "rejected": 3}, HH_ROWS[0]]                  # dialogues that are no text
    assert len(sft.normalise(hh_rows, "h.jsonl")) == 1
    assert "1 (chosen or rejected is neither text nor chat messages; first: row 1)" in capsys.readouterr().out
    tldr = [{"info": {"post": "p"}, "summaries": [{"text": "a"}, {"text": "b"}], "choice": 5},
            {"info": None, "summaries": [{"text": "a"}, {"text": "b"}], "choice": 0},
            {"info": {"post": "p"}, "summaries": [{"text": "a"}, {"text": "b"}], "choice": 1}]
    assert len(sft.normalise(tldr, "t.jsonl")) == 1
    assert ("skipped 1 (choice is not 0 or 1; first: row 1); skipped 1 (info is not an object, or summaries not "
            "two objects with a text; first: row 2)" in capsys.readouterr().out)
    with pytest.raises(sft.UserError, match="prompts without chosen/rejected responses; this stage needs"):
        sft.normalise([{"prompt": "p"}], "p.jsonl")
    assert sft.normalise([{"prompt": "p"}], "p.jsonl", pairs=False)[0]["prompt"] == [{"role": "user", "content": "p"}]


def test_long_pairs_are_dropped_not_cut(tiny, capsys):
    _, tok = tiny
    rows = [{"prompt": "p", "chosen": "short", "rejected": "word " * 200}, {"prompt": "p", "chosen": "a", "rejected": "b"}]
    assert sft.drop_long_pairs(rows, tok, 32, "x.jsonl") == rows[1:]
    assert "x.jsonl: dropped 1 of 2 pairs with a response of 32 tokens or more" in capsys.readouterr().out
    with pytest.raises(sft.UserError, match="every pair has a response of 1 tokens or more"):
        sft.drop_long_pairs(rows, tok, 1, "x.jsonl")


def test_a_kept_pair_is_never_cut_with_or_without_a_chat_template(tiny_model_dir, capsys):
    """drop_long_pairs counts the tokens encode_rows keeps: without a chat template a response follows
    'Assistant:' after a space, which can change its tokens ('zq' and ' zq' differ here)."""
    from transformers import AutoTokenizer
    for template in (True, False):
        tok = AutoTokenizer.from_pretrained(tiny_model_dir)
        tok.chat_template = tok.chat_template if template else None
        rows = [{"prompt": [{"role": "user", "content": "p"}], "chosen": "zq " * n + "zq", "rejected": "b"}
                for n in range(6)]
        for limit in range(4, 14):
            kept = sft.drop_long_pairs(rows, tok, limit, "x")
            assert len(kept) == sum(len(sft.response_ids(tok, r["chosen"])) < limit for r in rows)
            for r, (_, chosen, _) in zip(kept, sft.encode_rows(tok, kept, 64, limit, "x")):
                assert chosen == sft.response_ids(tok, r["chosen"]) + [tok.eos_token_id]   # whole, then EOS
    capsys.readouterr()


def test_a_chat_template_that_refuses_a_prompt_is_one_line(tiny_model_dir):
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tok.chat_template = "{{ raise_exception('Conversation roles must alternate user/assistant') }}"
    msgs = [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
    with pytest.raises(sft.UserError, match=r"the chat template refuses a prompt with roles user/user \('b'\.\.\.\)"
                                            r".*roles must alternate"):
        sft.render_prompt(tok, msgs)
    tok.chat_template = ("{% if messages[0]['content'] == 'a' and messages|length > 1 %}{{ raise_exception("
                         "'roles must alternate') }}{% endif %}{{ messages[0]['content'] }}")
    with pytest.raises(sft.UserError, match=r"^pairs.jsonl: the chat template refuses a prompt with roles user/user \('b'"):
        sft.encode_rows(tok, [{"prompt": msgs[:1]}, {"prompt": msgs}], 64, None, "pairs.jsonl", responses=())


def test_a_reward_model_with_another_tokenizer_is_refused(tiny, tmp_path):
    from conftest import build_tiny
    from transformers import AutoTokenizer
    _, tok = tiny
    sft.check_same_tokenizer(tok, tok, "--reward", "rm")                       # the same one passes
    other = AutoTokenizer.from_pretrained(build_tiny(tmp_path / "other", vocab_size=300))
    with pytest.raises(sft.UserError, match="--reward rm: its tokenizer differs from the policy's"):
        sft.check_same_tokenizer(tok, other, "--reward", "rm")
    plain = copy.deepcopy(tok)
    plain.chat_template = None   # the same ids, but prompts rendered as "User: ..." instead of the template's
    with pytest.raises(sft.UserError, match=r"--reward rm: its chat template differs from the policy's \(or one has none\)"):
        sft.check_same_tokenizer(tok, plain, "--reward", "rm")
    plain.chat_template = tok.chat_template.replace("{% for", "{%- for").replace("{% endfor %}", "{%- endfor %}")
    assert plain.chat_template != tok.chat_template
    sft.check_same_tokenizer(tok, plain, "--reward", "rm")    # written otherwise, rendering the same: accepted
    plain.chat_template = tok.chat_template.replace("<|im_start|>assistant", "<|im_start|>bot")
    with pytest.raises(sft.UserError, match="its chat template differs"):
        sft.check_same_tokenizer(tok, plain, "--reward", "rm")


def test_conversational_pairs_json_arrays_and_typed_summarize_from_feedback_rows(tmp_path, capsys):
    """Chosen and rejected as chat messages that end with the two replies (UltraFeedback: the whole
    conversation; TRL's datasets: the reply alone beside a prompt column, or the conversation without one);
    a .json file holding one JSON array; summarize_from_feedback rows of the wrong types skipped by name."""
    user, reply = (lambda t: {"role": "user", "content": t}), (lambda t: {"role": "assistant", "content": t})
    rows = [{"prompt": "Hi?", "chosen": [user("Hi?"), reply("Hello!")], "rejected": [user("Hi?"), reply("Go.")]},
            {"prompt": [user("Q")], "chosen": [reply("A")], "rejected": [reply("B")]},
            {"prompt": "x", "chosen": [user("Q"), reply("A")], "rejected": [user("R"), reply("B")]},
            {"prompt": "x", "chosen": [user("Q")], "rejected": [user("Q")]}]
    out = sft.normalise(rows, "uf")
    assert [(r["prompt"], r["chosen"], r["rejected"]) for r in out] == [([user("Hi?")], "Hello!", "Go."),
                                                                      ([user("Q")], "A", "B")]
    printed = capsys.readouterr().out
    assert "conversational" in printed and "do not share the conversation before the last reply; first: row 3" in printed
    assert "does not end with an assistant message; first: row 4" in printed
    implicit = [{"chosen": [user("Q"), reply("A")], "rejected": [user("Q"), reply("B")]}]
    assert sft.normalise(implicit, "trl", pairs=False)[0]["prompt"] == [user("Q")]
    (tmp_path / "arr.json").write_text(json.dumps([{"prompt": "a", "chosen": "b", "rejected": "c"}], indent=2))
    assert sft.normalise(sft.load_rows(str(tmp_path / "arr.json"), "--data"), "arr")[0]["chosen"] == "b"
    (tmp_path / "lines.json").write_bytes(b'\xef\xbb\xbf{"prompt": "a"}\r\n\r\n{"prompt": "b"}\n{"prompt":\n')
    with pytest.raises(sft.UserError, match=r"lines.json:4: not valid JSON"):   # JSON lines named .json
        sft.load_rows(str(tmp_path / "lines.json"), "--data")
    (tmp_path / "mac.jsonl").write_bytes(b'{"prompt": "a"}\r{"prompt": "b"}\r')   # CR alone ends its lines
    with pytest.raises(sft.UserError, match=r"mac.jsonl:1: not valid JSON \(Extra data\) \(its lines end in a "
                                            r"carriage return alone; expected \\n or \\r\\n\)$"):
        sft.load_rows(str(tmp_path / "mac.jsonl"), "--data")
    (tmp_path / "mac.jsonl").write_bytes(b'{"prompt": "a\rb"}\n')   # a raw CR inside a string: no word on line ends
    with pytest.raises(sft.UserError, match=r"mac.jsonl:1: not valid JSON \(Invalid control character at\)$"):
        sft.load_rows(str(tmp_path / "mac.jsonl"), "--data")
    (tmp_path / "obj.json").write_text(json.dumps({"prompt": "a", "chosen": "b", "rejected": "c"}, indent=2))
    with pytest.raises(sft.UserError, match=r"obj.json: one JSON object; expected rows"):
        sft.load_rows(str(tmp_path / "obj.json"), "--data")
    (tmp_path / "lines.json").write_bytes(b'\xef\xbb\xbf{"prompt": "a"}\r\n\r\n{"prompt": "b"}\n')
    assert sft.load_rows(str(tmp_path / "lines.json"), "--data") == [{"prompt": "a"}, {"prompt": "b"}]
    sff = {"info": {"post": "p"}, "summaries": [{"text": "a"}, {"text": "b"}], "choice": 1}
    bad = [dict(sff, choice=1.7), dict(sff, choice=True), dict(sff, info="text"), dict(sff, summaries=[{"text": "a"}])]
    assert len(sft.normalise([sff] + bad, "sff")) == 1
    printed = capsys.readouterr().out
    assert "skipped 2 (choice is not 0 or 1; first: row 2)" in printed
    assert "skipped 2 (info is not an object, or summaries not two objects with a text; first: row 4)" in printed
    (tmp_path / "dir.jsonl").mkdir()
    with pytest.raises(sft.UserError, match="dir.jsonl: a directory, expected a file"):
        sft.load_rows(str(tmp_path / "dir.jsonl"), "--data")


def test_rows_that_repeat_an_earlier_row_are_kept_and_counted(capsys):
    """A repeated pair is trained on (and a repeated prompt evaluated) as often as it appears: said, not hidden.
    05 samples each distinct prompt once (repeats_used=False) and says so itself."""
    pair = {"prompt": "Add 2 and 3.", "chosen": "5", "rejected": "6"}
    rows = [pair, {**pair, "rejected": "7"}, dict(pair), {**pair, "prompt": "Add 1 and 1."}]
    assert len(sft.normalise(rows, "p.jsonl")) == 4
    assert "p.jsonl: prompt/chosen/rejected format, 4 rows kept; 1 with the pair of an earlier row (each used as " \
           "often as it appears)" in capsys.readouterr().out
    assert len(sft.normalise(rows, "p.jsonl", pairs=False)) == 4   # as prompts (06 --data): two repeat one
    assert "4 rows kept; 2 with the prompt of an earlier row (each" in capsys.readouterr().out
    sft.normalise(rows, "p.jsonl", pairs=False, repeats_used=False)
    assert capsys.readouterr().out.endswith("4 rows kept; 2 with the prompt of an earlier row\n")
    sft.normalise(rows[:2], "p.jsonl")
    assert "earlier row" not in capsys.readouterr().out


def test_a_prompt_whose_last_turn_is_blank_is_skipped_as_empty(capsys):
    """A blank string prompt was skipped as empty, a chat prompt whose user turn is blank was kept (05 trained on it)."""
    blank = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": " \n\t"}]
    rows = [{"prompt": "Add 2 and 3.", "chosen": "5", "rejected": "6"}, {"prompt": blank, "chosen": "5", "rejected": "6"},
            {"prompt": "   ", "chosen": "5", "rejected": "6"}]
    assert len(sft.normalise(rows, "p.jsonl")) == 1
    assert "skipped 2 (empty prompt; first: row 2)" in capsys.readouterr().out
    # text that shows nothing: zero-width characters, a NUL, a BOM (were kept as prompts and responses)
    rows = [{"prompt": p, "chosen": "5", "rejected": "6"} for p in ("\u200b", "\x00 ", "\ufeff\u200d", "🙂", "e\u0301")]
    rows.append({"prompt": "Add 2 and 3.", "chosen": "\u200b\u2060", "rejected": "6"})
    assert [r["prompt"][-1]["content"] for r in sft.normalise(rows, "p.jsonl")] == ["🙂", "e\u0301"]
    printed = capsys.readouterr().out
    assert "empty prompt; first: row 1" in printed and "empty response" in printed


def test_a_file_of_columns_is_named_as_such():
    """{"prompt": [...], "chosen": [...], "rejected": [...]} (a dict of columns, as pandas writes by default) had
    been read as one row and skipped with a reason that did not say why."""
    columns = {"prompt": ["Add 2 and 3.", "Add 1 and 1."], "chosen": ["5", "2"], "rejected": ["6", "3"]}
    with pytest.raises(sft.UserError, match=r"c.json: one object of columns \(prompt, chosen, rejected: lists of 2 "
                                            r"values\); expected one object a row"):
        sft.normalise([columns], "c.json")
    assert len(sft.normalise([{k: v[0] for k, v in columns.items()}], "c.json")) == 1   # one row: read


def test_windows_line_ends_and_a_summarize_from_feedback_row_with_a_prompt_column(capsys):
    """HH-RLHF text with CRLF read as one Human turn ("ends on a Human turn"); a summarize_from_feedback row that
    also carries a prompt column was skipped as "malformed: KeyError"."""
    row = {"chosen": "\r\n\r\nHuman: q?\r\n\r\nAssistant: yes", "rejected": "\r\n\r\nHuman: q?\r\n\r\nAssistant: no"}
    assert sft.normalise([row], "crlf.jsonl") == [{"prompt": [{"role": "user", "content": "q?"}], "chosen": "yes",
                                                   "rejected": "no"}]
    row = {"info": {"post": "p", "title": "t", "subreddit": "s"}, "summaries": [{"text": "a"}, {"text": "b"}],
           "choice": 1, "prompt": "x"}
    assert sft.normalise([row], "sff.jsonl")[0]["chosen"] == "b"
    row = {"prompt": "x", "info": {"post": "p"}, "summaries": [{"text": "a"}]}   # prompts, with other columns
    assert sft.normalise([row], "prompts.jsonl", pairs=False)[0]["prompt"] == [{"role": "user", "content": "x"}]


def test_hh_text_in_a_prompt_column_a_post_less_summary_row_and_a_file_of_mixed_formats(capsys):
    """Three probes: a prompt column in HH's Human/Assistant text (Dahoas/full-hh-rlhf) was kept as one user
    turn reading 'Human: ...Assistant:'; a summarize_from_feedback row with no post was kept as an empty post;
    a file whose rows are in different formats was named by its first row's alone."""
    row = {"prompt": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: What is 2+2?\n\nAssistant:",
           "chosen": " It is 4.", "rejected": " 5."}
    assert sft.normalise([row], "dahoas.jsonl") == [{"prompt": [
        {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "What is 2+2?"}], "chosen": "It is 4.", "rejected": "5."}]
    sff = {"info": {"post": "p", "title": "t", "subreddit": "s"}, "summaries": [{"text": "a"}, {"text": "b"}], "choice": 1}
    assert len(sft.normalise([sff, {**sff, "info": {}}, {**sff, "info": {"title": "t", "post": " "}}], "sff")) == 1
    assert "skipped 2 (empty post (info's post or article); first: row 2)" in capsys.readouterr().out
    pair = {"prompt": "Add 2 and 3.", "chosen": "5", "rejected": "6"}
    assert len(sft.normalise([HH_ROWS[0], pair, {**pair, "chosen": "five"}], "mixed.jsonl")) == 3
    assert "mixed.jsonl: formats hh-rlhf (1), prompt/chosen/rejected (2), 3 rows kept" in capsys.readouterr().out


def test_a_named_pipe_is_read_as_a_file(tmp_path):
    """`mkfifo pairs.jsonl` (or a pipe a program writes to) had been refused as 'file not found'."""
    import threading
    pipe = tmp_path / "pairs.jsonl"
    os.mkfifo(pipe)
    writer = threading.Thread(target=lambda: pipe.write_text('{"prompt": "Add 2 and 3.", "chosen": "5", "rejected": "6"}\n'))
    writer.start()
    assert sft.load_rows(str(pipe), "--dataset") == [{"prompt": "Add 2 and 3.", "chosen": "5", "rejected": "6"}]
    writer.join()
    with pytest.raises(sft.UserError, match="--dataset .*nothing.jsonl: file not found"):
        sft.load_rows(str(tmp_path / "nothing.jsonl"), "--dataset")
