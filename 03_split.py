"""Stage 03 of MPO: split the preference pairs into an easy and a hard set by reward gap.

MPO (Gou & Nguyen, 2024, arXiv 2403.19443, its "data selection" step) scores every pair with the
reward model of stage 02 and uses the gap
    d = r(x, y_w) - r(x, y_l)
of the dataset's own chosen (y_w) and rejected (y_l) responses: pairs with a large gap are "easy" and
clean, and train DPO (stage 04); pairs with a small gap are "hard" and noisy, and only their prompts are
used, by PPO (stage 05), which scores fresh responses with the RM instead of trusting the labels.

The paper prints no exact rule. Our default follows the first author's public DeepSpeed-Chat fork, the
closest thing to official code:
  - easy where |d| >= threshold, hard otherwise (threshold 1 for HH-RLHF, 2 for TL;DR);
  - where d < 0 the pair is relabelled: chosen and rejected swap, the RM overrules the annotator;
  - each set is written sorted by descending |d|, an easy-to-hard curriculum; stage 04 shuffles it by
    default and reads it in this order only with `--curriculum`.
Relabelled rows keep `"relabelled": true`, so the dataset's own label can be restored (04 does so for
the hard-set ablation).
Alternatives, because this is the open question: `--wrong-way relabel|hard|drop` (what to do with pairs
the RM ranks the wrong way round), and `--easy-fraction f` (a quantile threshold: the f of pairs with
the largest |d| are easy) beside the absolute `--threshold`, since raw reward scales differ between RMs.

Reads:  runs/<run>/02_reward/ (and the data of the 01_sft directory it was trained from)
Writes: runs/<run>/03_split/  easy.jsonl, hard.jsonl, stats.json

    python 03_split.py                       # after 02_reward.py
    python 03_split.py --easy-fraction 0.5   # a quantile split instead of the absolute threshold
"""

import argparse
import contextlib
import gzip
import json
import math
import os
import shutil
import signal
import sys
import time
import zlib
from pathlib import Path

import torch
from tqdm import tqdm

# thresholds of the MPO author's DeepSpeed-Chat fork; other datasets fall back to DEFAULT_THRESHOLD
DATASET_THRESHOLDS = {"Anthropic/hh-rlhf": 1.0, "CarperAI/openai_summarize_comparisons": 2.0,
                      "openai/summarize_from_feedback": 2.0}
DEFAULT_THRESHOLD = 1.0


# ----------------------------------------------------------------------------------------------
# ARGUMENTS

def parse_args(argv=None):
    p = ArgParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("inputs and outputs")
    g.add_argument("--run", default="default", help="run name: inputs and outputs under runs/<run>/")
    g.add_argument("--reward", default=None, help="reward model directory (default runs/<run>/02_reward)")
    g.add_argument("--out", default=None, help="output directory (default runs/<run>/03_split)")
    g.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    g = p.add_argument_group("the split")
    g.add_argument("--threshold", type=float, default=None,
                   help="easy where |d| >= threshold (default: 1 for HH-RLHF and the built-in task, "
                        "2 for TL;DR, as in the MPO author's fork)")
    g.add_argument("--easy-fraction", type=float, default=None,
                   help="instead of --threshold: the share of pairs, largest |d| first, that is easy")
    g.add_argument("--wrong-way", default="relabel", choices=["relabel", "hard", "drop"],
                   help="pairs with d < 0: swap chosen and rejected (the fork), send them to the hard "
                        "set unchanged, or drop them")
    g.add_argument("--batch-size", type=int, default=32, help="pairs scored per batch")
    g.add_argument("--max-prompt-len", type=int, default=None,
                   help="prompt tokens kept (from the left); default: stage 01's")
    g.add_argument("--max-response-len", type=int, default=None, help="response tokens kept; default: stage 01's")
    g = p.add_argument_group("system")
    g.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    g.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                   help="auto: bf16 autocast on CUDA (fp16 where bf16 is missing); on a CPU bf16 only "
                        "where it computes bf16 natively (measured), else fp32")
    return check_ranges(p.parse_args(argv), {
        "threshold": NON_NEGATIVE, "easy_fraction": (lambda x: 0 < x < 1, "a number in (0, 1)"),
        "batch_size": AT_LEAST_1, "max_prompt_len": AT_LEAST_1,
        "max_response_len": (lambda x: x >= 2, "an integer >= 2 (room for EOS)")})


# ----------------------------------------------------------------------------------------------
# HELPERS (identical copies in several stages; tests/test_helpers.py keeps them identical)

class UserError(Exception):
    """A problem with the user's input: reported as one line, exit code 2, nothing written."""

def pick_device(name):
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name}: CUDA is not available on this machine (use --device cpu)")
    try:
        return torch.device(name)
    except RuntimeError:
        raise UserError(f"--device {name!r}: expected auto, cpu, cuda or cuda:N") from None

def cpu_matmul_rates(n=256, repeats=3):
    """GFLOP/s of an n x n matrix product on this CPU in fp32 and in bf16 (best of `repeats`; ~0.05 s).
    A CPU with bf16 instructions (avx512_bf16, AMX, Arm BF16) runs bf16 several times faster than fp32;
    one without emulates it, some 50x slower. The flags alone can mislead (torch may not use them)."""
    rates = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
        a @ b  # warm-up: oneDNN builds its kernel on first use
        seconds = []
        for _ in range(repeats):
            t = time.perf_counter()
            a @ b
            seconds.append(time.perf_counter() - t)
        rates[name] = 2 * n**3 / max(min(seconds), 1e-9) / 1e9
    return rates


def pick_precision(name, device):
    """(autocast dtype or None for plain fp32, the reason in words). Weights stay fp32 (master weights).
    auto: bf16 on CUDA (fp16 where bf16 is missing); on a CPU, bf16 only where a probe measures bf16
    matrix products at least 1.5x faster than fp32 (native bf16), else fp32. Printed in one line."""
    if name == "fp16" and device.type != "cuda":
        raise UserError("--precision fp16 needs CUDA; use bf16 or fp32 on CPU")
    if device.type == "cuda":
        bf16_ok = torch.cuda.is_bf16_supported()
        dtype = {"auto": torch.bfloat16 if bf16_ok else torch.float16, "fp32": None,
                 "bf16": torch.bfloat16, "fp16": torch.float16}[name]
        reason = "asked for" if name != "auto" else "CUDA " + ("with" if bf16_ok else "without") + " bf16"
    elif name == "fp32":
        dtype, reason = None, "asked for"
    else:  # auto or bf16 on a CPU: measure how this CPU computes bf16
        rates = cpu_matmul_rates()
        speedup = rates["bf16"] / rates["fp32"]
        measured = f"bf16 {rates['bf16']:.1f} vs fp32 {rates['fp32']:.1f} GFLOP/s in a matrix-product probe"
        native = speedup >= 1.5
        if name == "bf16" and not native:
            print(f"warning: --precision bf16 on a CPU without native bf16 ({measured}): matrix products run "
                  f"about {1 / speedup:.0f}x slower than in fp32; --precision auto would pick fp32", file=sys.stderr)
        dtype = torch.bfloat16 if name == "bf16" or native else None
        reason = ("asked for; " if name == "bf16" else "") + ("native" if native else "no native") + f" bf16 ({measured})"
    label = {None: "fp32", torch.bfloat16: "bf16 autocast", torch.float16: "fp16 autocast"}[dtype]
    print(f"precision: {label}: {reason}")
    return dtype, reason


def precision_name(dtype):
    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


def autocast(device, dtype):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)

def peak_memory_mb(device):
    """Peak GPU memory allocated by torch, or the process's peak resident memory on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

def read_jsonl(path):
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    rows, i = [], 0
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            for i, line in enumerate(f, 1):
                if line.strip():
                    rows.append(json.loads(line))
    except json.JSONDecodeError as e:
        raise UserError(f"{path}:{i}: not valid JSON ({e.msg})") from None
    except (OSError, EOFError, zlib.error, UnicodeDecodeError) as e:  # a corrupt or truncated file
        kind = "gzip-compressed JSON lines" if path.suffix == ".gz" else "UTF-8 JSON lines"
        raise UserError(f"{path}: not readable as {kind} after line {i} ({type(e).__name__}: {e})") from None
    return rows

def write_jsonl(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")

def render_prompt(tokenizer, messages):
    """The prompt as text, ending where the assistant's reply begins (chat template if any)."""
    if tokenizer.chat_template:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    text = "".join(f"{m['role'].capitalize()}: {m['content']}\n\n" for m in messages)
    return text + "Assistant:"

def encode(tokenizer, messages, response, max_prompt_len, max_response_len):
    """(prompt_ids, response_ids). The response ends with EOS, the token that closes an assistant turn
    in chat templates; the prompt is cut from the left so the response always survives."""
    prompt_ids = tokenizer(render_prompt(tokenizer, messages), add_special_tokens=False)["input_ids"]
    prompt_ids = prompt_ids[-max_prompt_len:]
    if not tokenizer.chat_template:
        response = " " + response
    response_ids = tokenizer(response, add_special_tokens=False)["input_ids"][: max_response_len - 1]
    return prompt_ids, response_ids + [tokenizer.eos_token_id]

def collate(seqs, pad_id, side="right"):
    """Pad (prompt_ids, response_ids) pairs into tensors, each (B, T):
    input_ids, attention_mask, and response_mask (1 on response tokens)."""
    T = max(len(p) + len(r) for p, r in seqs)
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    attn = torch.zeros((len(seqs), T), dtype=torch.long)
    resp = torch.zeros((len(seqs), T), dtype=torch.bool)
    for i, (p, r) in enumerate(seqs):
        n = len(p) + len(r)
        s = 0 if side == "right" else T - n
        ids[i, s:s + n] = torch.tensor(p + r)
        attn[i, s:s + n] = 1
        resp[i, s + len(p):s + n] = True
    return ids, attn, resp

def position_ids_from(attention_mask):
    """Positions that skip left padding, so left- and right-padded batches give the same numbers."""
    return (attention_mask.cumsum(-1) - 1).clamp(min=0)

def prepare_output(out, overwrite):
    """Refuse an existing output (unless --overwrite) and return a fresh temporary directory beside it;
    `commit_output` renames it into place only when the stage has finished."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise UserError(f"{out} exists; pass --overwrite to replace it")
    for stale in out.parent.glob(f".{out.name}.tmp-*"):  # left by a killed run whose process is gone
        try:
            os.kill(int(stale.name.rsplit("-", 1)[1]), 0)
        except (ValueError, ProcessLookupError):
            shutil.rmtree(stale, ignore_errors=True)
        except PermissionError:
            pass
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp

def commit_output(tmp, out):
    out = Path(out)
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old)
    else:
        tmp.rename(out)

def versions():
    import transformers
    return {"python": sys.version.split()[0], "torch": torch.__version__,
            "transformers": transformers.__version__}

def fp32_no_dropout(model):
    """The model as every stage uses it: fp32 weights (the master weights of training) whatever dtype the
    checkpoint was stored in (transformers 5 keeps the stored dtype), and dropout off, as TRL does by
    default, so training, cached reference log-probs and sampling all see one deterministic function."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        for name, value in list(vars(module).items()):  # rates read in forward, e.g. Llama's attention_dropout
            if "dropout" in name and isinstance(value, float):
                setattr(module, name, 0.0)
    for name, value in model.config.to_dict().items():  # so a saved checkpoint says so too
        if ("dropout" in name or "pdrop" in name) and isinstance(value, float):
            setattr(model.config, name, 0.0)
    return model.float()


# the ranges that check_ranges tests: (test, what is expected)
POSITIVE = (lambda x: x > 0, "a number > 0")
NON_NEGATIVE = (lambda x: x >= 0, "a number >= 0")
AT_LEAST_1 = (lambda x: x >= 1, "an integer >= 1")
FRACTION = (lambda x: 0 <= x <= 1, "a number in [0, 1]")
STEPS = (lambda x: x >= 1 or x == -1, "a number of steps >= 1, or -1 for whole epochs")


def check_ranges(args, rules):
    """The numeric flags in range, checked in one place before anything runs: rules maps a flag's dest to
    (test, what it expects); a value that fails, NaN and infinity included, is a one-line error."""
    for dest, (ok, expected) in rules.items():
        value = getattr(args, dest)
        if value is not None and not (math.isfinite(value) and ok(value)):
            raise UserError(f"--{dest.replace('_', '-')} {value}: expected {expected}")
    return args


def check_model_dir(path, head, flag):
    """A one-line error unless `path` holds a model with the head this stage loads it with: 'causal' for
    a policy (*ForCausalLM), 'reward' for a reward model (*ForSequenceClassification with one label);
    a reward model loaded as a policy would silently get a fresh random LM head, and the reverse a
    fresh random score head."""
    config = Path(path) / "config.json"
    if not config.exists():
        raise UserError(f"{flag} {path}: no config.json there; expected a Hugging Face model directory")
    config = json.load(open(config))
    archs = config.get("architectures") or []
    if head == "causal" and not any(a.endswith("ForCausalLM") for a in archs):
        raise UserError(f"{flag} {path}: a {'/'.join(archs) or 'headless'} model; expected a causal LM "
                        f"(a policy: 01_sft, 04_dpo or 05_ppo output)")
    if head == "reward" and not (any(a.endswith("ForSequenceClassification") for a in archs)
                                 and len(config.get("id2label", {0: 0})) == 1):
        raise UserError(f"{flag} {path}: a {'/'.join(archs) or 'headless'} model; expected a reward model "
                        f"(02_reward output: a sequence classifier with one label)")


def inherit_lengths(args, sft_stage):
    """Length limits not given on the command line come from stage 01's stage.json, so every stage sees
    the prompts and responses with the context SFT trained on (printed, as every inherited setting)."""
    for name in ("max_prompt_len", "max_response_len"):
        if getattr(args, name, 0) is None:
            setattr(args, name, sft_stage["args"][name])
            print(f"inherited --{name.replace('_', '-')} {getattr(args, name)} from 01_sft")


def run_main(main, argv=None):
    """Run a stage: a UserError becomes one line on stderr and exit code 2; the temporary output
    directory of a failed or interrupted run is removed, so nothing half-written is left behind."""
    name = Path(sys.argv[0]).name
    state = {}
    # a kill (SIGTERM) unwinds like Ctrl-C, so the `finally` below removes the temporary directory
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        main(parse_args(argv), state)
    except UserError as e:
        print(f"{name}: error: {e}", file=sys.stderr)
        sys.exit(2)
    finally:
        if state.get("tmp") is not None and Path(state["tmp"]).exists():
            shutil.rmtree(state["tmp"], ignore_errors=True)

def need_stage(path, stage, command):
    """The stage.json of an earlier stage's directory, or a UserError naming the command that makes it."""
    path = Path(path)
    if not (path / "stage.json").exists():
        raise UserError(f"{path} is not a finished {stage} directory; run `{command}` first")
    return json.load(open(path / "stage.json"))

def reward_scores(rm, input_ids, attention_mask):
    """r(x, y) for each sequence, (B,): the scalar head on the hidden state of the last real token
    (the last position where attention_mask is 1, so left or right padding both work)."""
    hidden = rm.base_model(input_ids=input_ids, attention_mask=attention_mask,
                           position_ids=position_ids_from(attention_mask),
                           use_cache=False).last_hidden_state                      # (B, T, H)
    T = attention_mask.shape[1]
    last = T - 1 - attention_mask.flip(-1).argmax(-1)                              # (B,)
    h_last = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]     # (B, H)
    return rm.score(h_last).squeeze(-1).float()                                    # (B,)


def inherited_dir(recorded, stage_dir):
    """An input directory that an earlier stage recorded in its stage.json: the recorded path, or, if
    the run directory was moved or the path was relative to another working directory, the directory
    of that name beside `stage_dir`."""
    path = Path(recorded)
    if (path / "stage.json").exists():
        return path
    beside = Path(stage_dir).parent / path.name
    if (beside / "stage.json").exists():
        return beside
    raise UserError(f"{stage_dir}/stage.json names {recorded}, which is not there (nor beside it); "
                    f"rerun the earlier stages or pass the directory explicitly")


class ArgParser(argparse.ArgumentParser):
    """argparse with a one-line error (no usage block): `prog: error: argument --lr: invalid float value`."""

    def error(self, message):
        print(f"{self.prog}: error: {message} (see --help)", file=sys.stderr)
        sys.exit(2)



@torch.no_grad()
def score_pairs(rm, tok, rows, batch_size, max_prompt_len, max_response_len, device, dtype, desc):
    """Reward gaps d = r(x, y_w) - r(x, y_l) of every row, (N,), batched under inference mode, chosen
    and rejected of a batch in one forward pass. Pairs are batched in order of length, so a batch
    pads little, and the gaps are returned in the order of `rows`."""
    rm.eval()
    encoded = [(encode(tok, r["prompt"], r["chosen"], max_prompt_len, max_response_len),
                encode(tok, r["prompt"], r["rejected"], max_prompt_len, max_response_len)) for r in rows]
    order = sorted(range(len(rows)), key=lambda i: max(len(p) + len(y) for p, y in encoded[i]))
    gaps, t0, bar = [0.0] * len(rows), time.time(), tqdm(total=len(rows), desc=desc, dynamic_ncols=True)
    for start in range(0, len(rows), batch_size):
        idx = order[start:start + batch_size]
        seqs = [encoded[i][0] for i in idx] + [encoded[i][1] for i in idx]
        ids, attn, _ = (t.to(device) for t in collate(seqs, tok.pad_token_id))
        with torch.inference_mode(), autocast(device, dtype):
            r = reward_scores(rm, ids, attn)                                       # (2B,)
        for i, d in zip(idx, (r[:len(idx)] - r[len(idx):]).tolist()):
            gaps[i] = d
        bar.update(len(idx))
        bar.set_postfix(pairs_s=f"{(start + len(idx)) / (time.time() - t0):.1f}")
    bar.close()
    return gaps


# ----------------------------------------------------------------------------------------------
# THE SPLIT (pure functions)

def split_pairs(rows, gaps, threshold, wrong_way="relabel"):
    """MPO's data selection. Returns (easy, hard), lists of rows with "gap" = d of the row as it is
    written (so relabelled rows have d > 0) and "relabelled" set where chosen and rejected swapped.
      easy: |d| >= threshold; hard: |d| < threshold.
      wrong_way: d < 0 -> 'relabel' swaps the pair (then splits by |d|), 'hard' sends it to the hard
      set unchanged, 'drop' removes it."""
    easy, hard = [], []
    for row, d in zip(rows, gaps):
        row = dict(row, gap=d, relabelled=False)
        if d < 0:
            if wrong_way == "drop":
                continue
            if wrong_way == "hard":
                hard.append(row)
                continue
            row.update(chosen=row["rejected"], rejected=row["chosen"], gap=-d, relabelled=True)
            if "gold_chosen" in row:
                row.update(gold_chosen=row["gold_rejected"], gold_rejected=row["gold_chosen"])
        (easy if abs(d) >= threshold else hard).append(row)
    return easy, hard


def quantile(xs, q):
    """Linear-interpolation quantile of a list (q in [0, 1])."""
    xs = sorted(xs)
    if not xs:
        return float("nan")
    pos = q * (len(xs) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def threshold_for_fraction(gaps, easy_fraction):
    """The |d| threshold that makes about `easy_fraction` of the pairs easy."""
    return quantile([abs(d) for d in gaps], 1 - easy_fraction)


def label_noise(rows):
    """Share of pairs whose label disagrees with the gold order (ties count as half); None without gold."""
    if not rows or "gold_chosen" not in rows[0]:
        return None
    return sum(1.0 if r["gold_chosen"] < r["gold_rejected"] else 0.5 if r["gold_chosen"] == r["gold_rejected"]
               else 0.0 for r in rows) / len(rows)


def original(row):
    """A row as the dataset labelled it (undoes a relabelling)."""
    if not row.get("relabelled"):
        return row
    row = dict(row, chosen=row["rejected"], rejected=row["chosen"])
    if "gold_chosen" in row:
        row.update(gold_chosen=row["gold_rejected"], gold_rejected=row["gold_chosen"])
    return row


def bucket_table(rows, gaps, edges):
    """Per |d| bucket [edges[i], edges[i+1]): pairs, RM accuracy against the labels (d > 0), and where
    gold exists the share of labels that disagree with the gold order."""
    table = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = [(r, d) for r, d in zip(rows, gaps) if lo <= abs(d) < hi]
        table.append({"bucket": f"[{lo:.2f}, {hi:.2f})" if hi != float("inf") else f">= {lo:.2f}",
                      "pairs": len(sel),
                      "rm_accuracy": sum(d > 0 for _, d in sel) / len(sel) if sel else None,
                      "label_noise": label_noise([r for r, _ in sel]) if sel else None})
    return table


def histogram(values, bins=12, width=40):
    lo, hi = min(values), max(values)
    step = (hi - lo) / bins or 1.0
    counts = [0] * bins
    for v in values:
        counts[min(bins - 1, int((v - lo) / step))] += 1
    top = max(counts)
    return "\n".join(f"  {lo + i * step:+7.2f} .. {lo + (i + 1) * step:+7.2f} | {'#' * round(width * c / top)} {c}"
                     for i, c in enumerate(counts))


def fmt(x, pct=True):
    return "   -  " if x is None else (f"{x:6.1%}" if pct else f"{x:6.3f}")


# ----------------------------------------------------------------------------------------------
# MAIN

def main(args, state):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    rm_dir = Path(args.reward or f"runs/{args.run}/02_reward")
    out = Path(args.out or f"runs/{args.run}/03_split")
    rm_stage = need_stage(rm_dir, "02_reward", "python 02_reward.py")
    check_model_dir(rm_dir, "reward", "--reward")
    sft_dir = inherited_dir(rm_stage["sft"], rm_dir)
    inherit_lengths(args, need_stage(sft_dir, "01_sft", "python 01_sft.py"))
    dataset = rm_stage["dataset"]["name"]
    print(f"inherited dataset {dataset!r} and SFT {sft_dir} from {rm_dir}")
    if args.easy_fraction is not None and args.threshold is not None:
        raise UserError("--threshold and --easy-fraction exclude each other; pass one")
    device = pick_device(args.device)
    dtype, precision_reason = pick_precision(args.precision, device)
    if out.exists() and not args.overwrite:
        raise UserError(f"{out} exists; pass --overwrite to replace it")
    t_start = time.time()

    tok = AutoTokenizer.from_pretrained(rm_dir)
    rm = fp32_no_dropout(AutoModelForSequenceClassification.from_pretrained(rm_dir)).to(device).eval()
    train = read_jsonl(sft_dir / "data_train.jsonl")
    test = [r for r in read_jsonl(sft_dir / "data_test.jsonl") if r.get("chosen")]
    kw = dict(batch_size=args.batch_size, max_prompt_len=args.max_prompt_len,
              max_response_len=args.max_response_len, device=device, dtype=dtype)
    t0 = time.time()
    gaps = score_pairs(rm, tok, train, desc="03_split train", **kw)
    pairs_per_s = len(train) / (time.time() - t0)
    test_gaps = score_pairs(rm, tok, test, desc="03_split test", **kw) if test else []

    # 1. the threshold: absolute (the fork's rule) or a quantile of |d|
    if args.easy_fraction is not None:
        threshold = threshold_for_fraction(gaps, args.easy_fraction)
        rule = f"quantile: the {args.easy_fraction:.0%} largest |d| are easy (|d| >= {threshold:.3f})"
    else:
        base = dataset.partition(":")[0]
        threshold = args.threshold if args.threshold is not None else DATASET_THRESHOLDS.get(base, DEFAULT_THRESHOLD)
        rule = f"absolute: easy where |d| >= {threshold:g}"
    easy, hard = split_pairs(train, gaps, threshold, args.wrong_way)
    qs = {f"q{int(q * 100):02d}": quantile(gaps, q) for q in (0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0)}
    abs_qs = {f"q{int(q * 100):02d}": quantile([abs(d) for d in gaps], q) for q in (0.1, 0.25, 0.5, 0.75, 0.9)}
    if not easy or not hard:
        raise UserError(f"threshold {threshold:g} leaves the {'easy' if not easy else 'hard'} set empty; "
                        f"|d| quantiles: " + ", ".join(f"{k}={v:.3f}" for k, v in abs_qs.items())
                        + "; pick --threshold between them or use --easy-fraction")

    # 2. each set in curriculum order, descending |d| (04 shuffles it unless --curriculum)
    easy.sort(key=lambda r: -abs(r["gap"]))
    hard.sort(key=lambda r: -abs(r["gap"]))

    # 3. the evidence: RM accuracy and label noise per gap bucket, label noise per set
    inf = float("inf")
    abs_edges = [0, 1, 2, 3, inf]
    test_abs = [abs(d) for d in test_gaps]
    q_edges = [0] + [quantile(test_abs, q) for q in (0.25, 0.5, 0.75)] + [inf] if test_gaps else []
    stats = {
        "dataset": dataset, "rule": rule, "threshold": threshold, "wrong_way": args.wrong_way,
        "order": "descending |d|", "pairs": len(train), "easy": len(easy), "hard": len(hard),
        "dropped": len(train) - len(easy) - len(hard), "wrong_way_pairs": sum(d < 0 for d in gaps),
        "gap_quantiles": qs, "abs_gap_quantiles": abs_qs,
        "heldout_buckets_abs": bucket_table(test, test_gaps, abs_edges) if test_gaps else [],
        "heldout_buckets_quantile": bucket_table(test, test_gaps, q_edges) if test_gaps else [],
        "train_buckets_abs": bucket_table(train, gaps, abs_edges),
        "label_noise": {"all_before": label_noise(train),
                        "easy_before_relabel": label_noise([original(r) for r in easy]),
                        "hard_before_relabel": label_noise([original(r) for r in hard]),
                        "easy": label_noise(easy), "hard": label_noise(hard)},
        "perf/pairs_per_s": pairs_per_s, "perf/peak_mem_mb": peak_memory_mb(device),
    }

    # 4. write, then show
    state["tmp"] = tmp = prepare_output(out, args.overwrite)
    write_jsonl(tmp / "easy.jsonl", easy)
    write_jsonl(tmp / "hard.jsonl", hard)
    stats["wall_time_s"] = time.time() - t_start
    json.dump({**stats, "stage": "03_split", "args": vars(args), "reward": str(rm_dir.resolve()), "sft": str(sft_dir.resolve()),
               "device": str(device), "precision": precision_name(dtype), "precision_reason": precision_reason,
               "versions": versions()}, open(tmp / "stats.json", "w"), indent=2)
    commit_output(tmp, out)

    print(f"\nreward gaps d of {len(train)} train pairs:\n{histogram(gaps)}")
    print(f"\nrule: {rule}; wrong way round (d < 0): {stats['wrong_way_pairs']} pairs -> {args.wrong_way}")
    print(f"easy {len(easy)}, hard {len(hard)}, dropped {stats['dropped']}")
    for name, key in (("held-out", "heldout_buckets_abs"), ("held-out, quartiles of |d|", "heldout_buckets_quantile")):
        if stats[key]:
            print(f"\n{name}: RM accuracy against the labels and label noise (vs gold) per |d| bucket")
            for b in stats[key]:
                print(f"  {b['bucket']:>18} {b['pairs']:5d} pairs  accuracy {fmt(b['rm_accuracy'])}"
                      f"  label noise {fmt(b['label_noise'])}")
    ln = stats["label_noise"]
    if ln["all_before"] is not None:
        print(f"\nlabel noise (share of labels against the gold order): all {fmt(ln['all_before'])}; "
              f"easy {fmt(ln['easy_before_relabel'])} -> {fmt(ln['easy'])} after {args.wrong_way}; "
              f"hard {fmt(ln['hard_before_relabel'])} -> {fmt(ln['hard'])}")
        if ln["easy"] is not None and ln["hard"] is not None and ln["easy"] >= ln["hard"]:
            print("WARNING: the easy set is not cleaner than the hard set: the split is not doing its job")
    print(f"\n03_split: {pairs_per_s:.1f} pairs/s, {stats['wall_time_s']:.0f}s wall -> {out}")


if __name__ == "__main__":
    run_main(main)
