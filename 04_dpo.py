"""Stage 04 of MPO: DPO (or IPO) on the easy set, with the SFT model as reference; online IPO / IPO-MD.

MPO (Gou & Nguyen, 2024, arXiv 2403.19443) trains DPO on the easy pairs of stage 03 (large
reward gap, clean labels), starting from and regularised towards the SFT model. Losses, with
h = (log pi(y_w|x) - log ref(y_w|x)) - (log pi(y_l|x) - log ref(y_l|x)):
  - DPO (Rafailov et al., 2023, arXiv 2305.18290, Eq. 7): -log sigmoid(beta * h), log-probs summed
    over response tokens; with label smoothing eps (conservative DPO, Mitchell 2023):
    -(1 - eps) log sigmoid(beta h) - eps log sigmoid(-beta h).
  - IPO (Azar et al., 2023, arXiv 2310.12036, Eq. 17; as used by Calandriello et al., 2024,
    arXiv 2403.08635): (h - 1/(2 tau))^2. The papers define h with sequence log-probs (sums); by default
    we average them over response tokens (`--ipo-aggregate mean`): TRL records that the IPO authors'
    reported results use this normalised form. `--ipo-aggregate sum` is the papers' equation.

`--online` (Calandriello et al., 2024, online IPO): each step samples two responses per prompt from the
current policy, labels the pair with the reward model of stage 02 used as a Bradley-Terry preference
model, and applies the loss. `--mixture-beta B` is IPO-MD: both responses come from the geometric
mixture of policy and reference (the regularised policy of Nash-MD, Munos et al., 2023),
    pi_mix(y_t | x, y_<t) ∝ pi(y_t | x, y_<t)^(1-B) * ref(y_t | x, y_<t)^B,
normalised over the vocabulary at every step; B = 0 is online IPO.

Deviations and choices of ours:
  1. Offline, the reference log-probs are computed once before training by the SFT weights that the
     policy starts from, cached in the output (ref_logps.json), and no second model is kept: training
     holds one model. Online, the reference must stay (it scores fresh samples and drives IPO-MD).
  2. Online preferences: the RM of stage 02 read as a Bradley-Terry model, p = sigmoid(r_1 - r_2), enters
     the loss as is: IPO's target becomes (p - 1/2) / tau, and DPO's loss is label-smoothed with
     eps = 1 - p, each the expectation over a label drawn from p (`--online-labels sample` draws it;
     `argmax`, the higher score wins, changes the equilibrium and is kept as an option).
  3. The pairs are shuffled each epoch, every pair seen once per epoch (a batch may span two epochs).
     `--curriculum` reads them in stage 03's order instead (descending gap, easy to hard): with a step cap
     shorter than an epoch that is a stricter threshold in disguise, so it is not the default.
     `--split hard` trains on the dataset's labels, not on the ones the RM flipped in stage 03 (MPO uses
     only the hard set's prompts; the ablation should not get worse labels than the dataset has);
     `--hard-labels rm` takes 03's relabelled pairs.
  4. Dropout is off in the policy (every rate set to 0, as TRL does by default), so the policy's first
     forward pass equals the cached reference (h = 0, loss log 2) and the online samples, taken in eval
     mode, come from the function that is trained. Weights train in fp32 whatever the stored dtype.

Reads:  runs/<run>/01_sft/, runs/<run>/03_split/ (easy.jsonl, hard.jsonl), online also 02_reward/
Writes: runs/<run>/04_dpo/ (or --out)  model + tokenizer, ref_logps.json, stage.json, metrics.jsonl

    python 04_dpo.py                               # MPO stage one: DPO on the easy set
    python 04_dpo.py --split all --out runs/default/04_dpo_all     # vanilla DPO, the baseline
    python 04_dpo.py --loss ipo --out runs/default/04_ipo
    python 04_dpo.py --online --loss ipo --mixture-beta 0.125 --out runs/default/04_ipo_md
"""

import argparse
import contextlib
import gzip
import json
import math
import os
import random
import shutil
import signal
import sys
import time
import zlib
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm


# ----------------------------------------------------------------------------------------------
# ARGUMENTS

def parse_args(argv=None):
    p = ArgParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("inputs and outputs")
    g.add_argument("--run", default="default", help="run name: inputs and outputs under runs/<run>/")
    g.add_argument("--sft", default=None, help="SFT directory: policy init and reference (default runs/<run>/01_sft)")
    g.add_argument("--split-dir", default=None, help="stage 03 directory (default runs/<run>/03_split)")
    g.add_argument("--reward", default=None, help="reward model for --online (default runs/<run>/02_reward)")
    g.add_argument("--split", default="easy", choices=["easy", "all", "hard"],
                   help="easy: MPO; all: vanilla DPO on every train pair (the baseline); hard: the ablation")
    g.add_argument("--hard-labels", default=None, choices=["dataset", "rm"],
                   help="with --split hard: the dataset's labels (the default), or stage 03's (pairs the RM "
                        "ranked the other way swapped)")
    g.add_argument("--out", default=None, help="output directory (default runs/<run>/04_dpo)")
    g.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    g = p.add_argument_group("loss")
    g.add_argument("--loss", default="dpo", choices=["dpo", "ipo"], help="DPO (Eq. 7) or IPO (Eq. 17)")
    g.add_argument("--beta", type=float, default=0.1, help="DPO: beta of Eq. 7, the KL strength")
    g.add_argument("--label-smoothing", type=float, default=0.0,
                   help="DPO: eps of conservative DPO, the assumed share of flipped labels")
    g.add_argument("--tau", type=float, default=1.0,
                   help="IPO: tau; the loss pulls the log-ratio gap h to 1/(2 tau)")
    g.add_argument("--ipo-aggregate", default="mean", choices=["mean", "sum"],
                   help="IPO: h from per-token mean log-probs (the IPO practice) or sums (the papers' Eq.)")
    g = p.add_argument_group("online IPO / IPO-MD (Calandriello et al., 2024)")
    g.add_argument("--online", action="store_true", help="sample pairs from the policy, label them with the RM")
    g.add_argument("--mixture-beta", type=float, default=0.0,
                   help="IPO-MD: sample from pi^(1-B) ref^B (normalised per token); 0 is online IPO")
    g.add_argument("--online-labels", default="soft", choices=["soft", "sample", "argmax"],
                   help="the preference p = sigmoid(r_1 - r_2) of the RM as a Bradley-Terry model: soft uses p "
                        "(IPO's target (p - 1/2)/tau), sample draws a label ~ p, argmax: higher score wins")
    g.add_argument("--max-new-tokens", type=int, default=48, help="online: tokens sampled per response")
    g.add_argument("--eval-every", type=int, default=10,
                   help="online: every N steps, RM win rate of policy against reference samples")
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=float, default=1.0, help="passes over the pairs (offline)")
    g.add_argument("--max-steps", type=int, default=-1, help="stop after this many optimiser steps (-1: epochs; online: 50)")
    g.add_argument("--batch-size", type=int, default=8, help="pairs per micro-batch (online: prompts per step)")
    g.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimiser step")
    g.add_argument("--lr", type=float, default=5e-6, help="peak learning rate of AdamW")
    g.add_argument("--weight-decay", type=float, default=0.0, help="AdamW weight decay")
    g.add_argument("--warmup-ratio", type=float, default=0.1, help="share of steps of linear warm-up")
    g.add_argument("--min-lr-ratio", type=float, default=0.1, help="cosine decay ends at lr * this")
    g.add_argument("--max-grad-norm", type=float, default=1.0, help="gradient clipping (global L2 norm)")
    g.add_argument("--curriculum", action="store_true",
                   help="read the pairs in stage 03's order (descending reward gap) instead of shuffling each epoch")
    g.add_argument("--max-prompt-len", type=int, default=None,
                   help="prompt tokens kept (from the left); default: stage 01's")
    g.add_argument("--max-response-len", type=int, default=None, help="response tokens kept; default: stage 01's")
    g.add_argument("--eval-batch-size", type=int, default=16, help="pairs per reference / held-out batch")
    g = p.add_argument_group("system")
    g.add_argument("--seed", type=int, default=0, help="seeds data order and sampling")
    g.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    g.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                   help="auto: bf16 autocast on CUDA (fp16 where bf16 is missing); on a CPU bf16 only "
                        "where it computes bf16 natively (measured), else fp32")
    g.add_argument("--grad-checkpointing", action="store_true", help="trade compute for memory")
    return check_ranges(p.parse_args(argv), {
        "beta": POSITIVE, "label_smoothing": (lambda x: 0 <= x < 0.5, "a number in [0, 0.5)"), "tau": POSITIVE,
        "mixture_beta": FRACTION, "max_new_tokens": AT_LEAST_1, "eval_every": AT_LEAST_1, "epochs": POSITIVE,
        "max_steps": STEPS, "batch_size": AT_LEAST_1, "grad_accum": AT_LEAST_1, "lr": POSITIVE,
        "weight_decay": NON_NEGATIVE, "warmup_ratio": FRACTION, "min_lr_ratio": FRACTION,
        "max_grad_norm": POSITIVE, "max_prompt_len": AT_LEAST_1,
        "max_response_len": (lambda x: x >= 2, "an integer >= 2 (room for EOS)"), "eval_batch_size": AT_LEAST_1})


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


class ArgParser(argparse.ArgumentParser):
    """argparse with a one-line error (no usage block): `prog: error: argument --lr: invalid float value`."""

    def error(self, message):
        print(f"{self.prog}: error: {message} (see --help)", file=sys.stderr)
        sys.exit(2)



def mixture_logps(policy_logps, ref_logps, beta):
    """log pi_mix for the IPO-MD sampler, (B, V): the normalised geometric mixture
        pi_mix(y) ∝ pi(y)^(1-beta) * ref(y)^beta
    of two next-token distributions given as log-probs (B, V). beta = 0 gives pi, beta = 1 gives ref."""
    return ((1 - beta) * policy_logps + beta * ref_logps).log_softmax(-1)


@torch.no_grad()
def sample_responses(policy, prompts, pad_id, eos_id, max_new_tokens, device, dtype, generator,
                     ref=None, mix=None):
    """Sample one response per prompt, token by token with a KV cache, at temperature 1 and with no
    top-k/top-p truncation, so the samples follow the model's own distribution. With `ref` and `mix`,
    a function of the two models' next-token log-probs (B, V) (04's IPO-MD mixture), the tokens come
    from mix(policy_logps, ref_logps), each model with its own KV cache. Prompts are left-padded. Returns (responses, logps): token lists, each cut
    after its first EOS (a response without EOS hit the length limit), and the log-prob of each sampled
    token under the distribution it was sampled from."""
    from transformers import DynamicCache
    models = [policy] + ([ref] if mix is not None else [])
    training = [m.training for m in models]
    for m in models:  # eval mode: in train mode, gradient-checkpointed layers drop the KV cache
        m.eval()
    ids, attn, _ = collate([(p, []) for p in prompts], pad_id, side="left")
    ids, attn = ids.to(device), attn.to(device)
    caches = [DynamicCache() for _ in models]
    step_ids, pos = ids, position_ids_from(attn)
    done = torch.zeros(len(prompts), dtype=torch.bool, device=device)
    out, out_logps = [], []
    for _ in range(max_new_tokens):
        logps = []
        for m, cache in zip(models, caches):
            with autocast(device, dtype):
                h = m.base_model(input_ids=step_ids, attention_mask=attn, position_ids=pos,
                                 past_key_values=cache, use_cache=True).last_hidden_state[:, -1]
                logps.append(m.get_output_embeddings()(h).float().log_softmax(-1))   # (B, V)
        logp = logps[0] if mix is None else mix(*logps)
        nxt = torch.multinomial(logp.exp(), 1, generator=generator).squeeze(-1)    # (B,)
        nxt = torch.where(done, torch.full_like(nxt, pad_id), nxt)
        out.append(nxt)
        out_logps.append(logp.gather(-1, nxt[:, None]).squeeze(-1))
        done |= nxt == eos_id
        if done.all():
            break
        step_ids = nxt[:, None]
        pos = attn.sum(-1, keepdim=True)                    # the next position of each row
        attn = torch.cat([attn, torch.ones_like(attn[:, :1])], dim=1)
    for m, mode in zip(models, training):
        m.train(mode)
    tokens = torch.stack(out, dim=1).tolist()                                      # (B, L)
    token_lp = torch.stack(out_logps, dim=1).tolist()                              # (B, L)
    responses, logps = [], []
    for row, lps in zip(tokens, token_lp):
        n = row.index(eos_id) + 1 if eos_id in row else len(row)
        responses.append(row[:n])
        logps.append(lps[:n])
    return responses, logps


# ----------------------------------------------------------------------------------------------
# LOSSES

def dpo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
             beta=0.1, label_smoothing=0.0):
    """DPO (Eq. 7 of arXiv 2305.18290), conservative with label_smoothing = eps > 0:
        h = (log pi(y_w) - log ref(y_w)) - (log pi(y_l) - log ref(y_l))
        L = -(1 - eps) log sigmoid(beta h) - eps log sigmoid(-beta h)
    All inputs (B,): sequence log-probs summed over response tokens; label_smoothing a float or (B,).
    Returns (losses (B,), chosen_rewards (B,), rejected_rewards (B,)); the implicit rewards
    beta * (log pi - log ref) are detached."""
    chosen_logratio = policy_chosen_logps - ref_chosen_logps
    rejected_logratio = policy_rejected_logps - ref_rejected_logps
    h = chosen_logratio - rejected_logratio
    losses = -(1 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)
    return losses, (beta * chosen_logratio).detach(), (beta * rejected_logratio).detach()


def ipo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, tau=1.0,
             preference=None):
    """IPO (Eq. 17 of arXiv 2310.12036; the loss of online IPO and IPO-MD in arXiv 2403.08635):
        L = (h - 1/(2 tau))^2,  h as in DPO
    All inputs (B,): sequence log-probs, by default AVERAGED over response tokens (the IPO practice; the
    target 1/(2 tau) is then per token and does not grow with length), or summed as in the equations.
    Returns (losses (B,), chosen_logratio (B,), rejected_logratio (B,)), the last two detached."""
    chosen_logratio = policy_chosen_logps - ref_chosen_logps
    rejected_logratio = policy_rejected_logps - ref_rejected_logps
    # the target (p - 1/2) / tau of IPO's population loss; 1/(2 tau) for a hard label (p = 1)
    target = 1 / (2 * tau) if preference is None else (preference - 0.5) / tau
    losses = (chosen_logratio - rejected_logratio - target) ** 2
    return losses, chosen_logratio.detach(), rejected_logratio.detach()


def sequence_logps(token_logps_, response_mask, average):
    """(B,) sum (DPO) or mean (IPO) of token log-probs (B, T-1) over the response tokens."""
    total = (token_logps_ * response_mask).sum(-1)
    return total / response_mask.sum(-1).clamp(min=1) if average else total


def preference_loss(args, pc, pr, rc, rr, preference=None):
    """The chosen loss; `preference` (B,) is P(chosen beats rejected) where it is not simply 1 (online).
    For DPO that is label smoothing with eps = 1 - p (the expected loss over a Bernoulli(p) label)."""
    if args.loss == "dpo":
        eps = args.label_smoothing if preference is None else 1 - preference
        return dpo_loss(pc, pr, rc, rr, args.beta, eps)
    return ipo_loss(pc, pr, rc, rr, args.tau, preference)


# ----------------------------------------------------------------------------------------------
# MAIN

def pair_logps(model, examples, pad_id, device, dtype, average):
    """Sequence log-probs of chosen and rejected, each (B,), in ONE forward pass of the 2B sequences."""
    seqs = [(p, c) for p, c, _ in examples] + [(p, r) for p, _, r in examples]
    ids, attn, resp = (t.to(device) for t in collate(seqs, pad_id))
    with autocast(device, dtype):
        tl = token_logps(model, ids, attn, resp)
    logps = sequence_logps(tl, resp[:, 1:], average)
    return logps[:len(examples)], logps[len(examples):], int(attn.sum())


@torch.no_grad()
def reference_logps(model, examples, pad_id, batch_size, device, dtype, average, desc):
    """[(ref_chosen, ref_rejected)] for every pair, batched under inference mode."""
    model.eval()
    out = []
    for i in tqdm(range(0, len(examples), batch_size), desc=desc, dynamic_ncols=True):
        with torch.inference_mode():
            c, r, _ = pair_logps(model, examples[i:i + batch_size], pad_id, device, dtype, average)
        out += list(zip(c.tolist(), r.tolist()))
    model.train()
    return out


@torch.no_grad()
def implicit_reward_accuracy(model, examples, rows, refs, args, pad_id, device, dtype, average):
    """Held-out preference accuracy of the implicit reward (log pi - log ref) of chosen over rejected,
    and its agreement with the gold order where rows carry gold scores."""
    model.eval()
    margins = []
    for i in range(0, len(examples), args.eval_batch_size):
        with torch.inference_mode():
            c, r, _ = pair_logps(model, examples[i:i + args.eval_batch_size], pad_id, device, dtype, average)
        ref = torch.tensor(refs[i:i + args.eval_batch_size], device=device)
        margins += ((c - ref[:, 0]) - (r - ref[:, 1])).tolist()
    model.train()
    # ties (as at step 0, where policy == reference) count as half
    out = {"eval/implicit_accuracy": sum(1.0 if m > 0 else 0.5 if m == 0 else 0.0 for m in margins) / max(1, len(margins))}
    gold = [(m, x["gold_chosen"] - x["gold_rejected"]) for m, x in zip(margins, rows) if "gold_chosen" in x]
    gold = [(m, g) for m, g in gold if g != 0]
    if gold:
        out["eval/implicit_gold_agreement"] = sum(0.5 if m == 0 else float((m > 0) == (g > 0)) for m, g in gold) / len(gold)
    return out


def load_pairs(args, sft_dir, split_dir):
    if args.split == "all":
        return read_jsonl(sft_dir / "data_train.jsonl"), {"split": "all", "from": str(sft_dir.resolve())}
    stats = need_stage_split(split_dir)
    rows = read_jsonl(split_dir / f"{args.split}.jsonl")
    if not rows:
        raise UserError(f"{split_dir / (args.split + '.jsonl')} is empty")
    labels = "rm"
    if args.split == "hard" and args.hard_labels != "rm":
        rows, labels = [original(r) for r in rows], "dataset"
    return rows, {"split": args.split, "from": str(split_dir.resolve()), "rule": stats.get("rule"), "labels": labels}


def original(row):
    """A row as the dataset labelled it (undoes a relabelling)."""
    if not row.get("relabelled"):
        return row
    row = dict(row, chosen=row["rejected"], rejected=row["chosen"])
    if "gold_chosen" in row:
        row.update(gold_chosen=row["gold_rejected"], gold_rejected=row["gold_chosen"])
    return row


def need_stage_split(split_dir):
    if not (Path(split_dir) / "stats.json").exists():
        raise UserError(f"{split_dir} is not a finished 03_split directory; run `python 03_split.py` first "
                        f"(or pass --split all for vanilla DPO)")
    return json.load(open(Path(split_dir) / "stats.json"))


def main(args, state):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer
    sft_dir = Path(args.sft or f"runs/{args.run}/01_sft")
    split_dir = Path(args.split_dir or f"runs/{args.run}/03_split")
    out = Path(args.out or f"runs/{args.run}/04_dpo")
    sft_stage = need_stage(sft_dir, "01_sft", "python 01_sft.py")
    inherit_lengths(args, sft_stage)
    print(f"inherited dataset {sft_stage['dataset']['name']!r} from {sft_dir}")
    check_model_dir(sft_dir, "causal", "--sft")
    if args.hard_labels and args.split != "hard":
        raise UserError("--hard-labels is for --split hard (the easy set's labels are 03's, and --split all's "
                        "the dataset's)")
    if args.mixture_beta > 0 and not args.online:
        raise UserError("--mixture-beta samples pairs online; pass --online too")
    if args.online and args.label_smoothing:
        raise UserError("--label-smoothing is for offline labels; online, eps = 1 - p comes from the RM")
    device = pick_device(args.device)
    dtype, precision_reason = pick_precision(args.precision, device)
    if out.exists() and not args.overwrite:
        raise UserError(f"{out} exists; pass --overwrite to replace it")
    seed_everything(args.seed)
    t_start = time.time()
    average = args.loss == "ipo" and args.ipo_aggregate == "mean"   # DPO always sums (Eq. 7)

    tok = AutoTokenizer.from_pretrained(sft_dir)
    policy = fp32_no_dropout(AutoModelForCausalLM.from_pretrained(sft_dir)).to(device)
    rows, source = load_pairs(args, sft_dir, split_dir)
    test_rows = [r for r in read_jsonl(sft_dir / "data_test.jsonl") if r.get("chosen")]

    def enc(r):
        p, c = encode(tok, r["prompt"], r["chosen"], args.max_prompt_len, args.max_response_len)
        return p, c, encode(tok, r["prompt"], r["rejected"], args.max_prompt_len, args.max_response_len)[1]
    train_ex, test_ex = [enc(r) for r in rows], [enc(r) for r in test_rows]
    state["tmp"] = tmp = prepare_output(out, args.overwrite)

    # 1. reference log-probs, once, by the SFT weights the policy starts from; then no second model
    t0 = time.time()
    ref_train = [] if args.online else reference_logps(policy, train_ex, tok.pad_token_id, args.eval_batch_size,
                                                       device, dtype, average, "04 reference (train)")
    ref_test = reference_logps(policy, test_ex, tok.pad_token_id, args.eval_batch_size, device, dtype,
                               average, "04 reference (test)")
    json.dump({"aggregate": "mean" if average else "sum", "train": ref_train, "test": ref_test},
              open(tmp / "ref_logps.json", "w"))
    ref_time = time.time() - t0
    ref_model = rm = None
    if args.online:
        rm_dir = Path(args.reward or f"runs/{args.run}/02_reward")
        need_stage(rm_dir, "02_reward", "python 02_reward.py")
        check_model_dir(rm_dir, "reward", "--reward")
        ref_model = fp32_no_dropout(AutoModelForCausalLM.from_pretrained(sft_dir)).to(device).eval()
        rm = fp32_no_dropout(AutoModelForSequenceClassification.from_pretrained(rm_dir)).to(device).eval()
        rm_pad = AutoTokenizer.from_pretrained(rm_dir).pad_token_id
        for m in (ref_model, rm):
            m.requires_grad_(False)

    policy.train()
    policy.config.use_cache = False
    if args.grad_checkpointing:
        policy.gradient_checkpointing_enable()
    opt = make_optimizer(policy.parameters(), args.lr, args.weight_decay, device)
    scaler = torch.amp.GradScaler(enabled=dtype == torch.float16)
    per_step = args.batch_size * args.grad_accum
    if args.max_steps > 0:
        total_steps = args.max_steps
    else:
        total_steps = 50 if args.online else max(1, math.ceil(len(train_ex) * args.epochs / per_step))
    metrics = open(tmp / "metrics.jsonl", "w")
    before = implicit_reward_accuracy(policy, test_ex, test_rows, ref_test, args, tok.pad_token_id,
                                      device, dtype, average)
    metrics.write(json.dumps({"step": 0, **before, "perf/reference_s": ref_time}) + "\n")
    gen = torch.Generator(device=device).manual_seed(args.seed)
    rng = random.Random(args.seed)
    # IPO-MD samples from the geometric mixture of policy and reference; online IPO from the policy alone
    mix = (lambda pi_logps, ref_logps: mixture_logps(pi_logps, ref_logps, args.mixture_beta)) \
        if args.mixture_beta > 0 else None

    # 2. training loop
    shuffle = not args.curriculum or args.online
    source["order"] = "shuffled each epoch" if shuffle else "stage 03's (descending |d|)"
    batches = epoch_batches(len(train_ex), args.batch_size, rng, shuffle=shuffle)
    tokens, train_time, gen_time, last = 0, 0.0, 0.0, {}
    bar = tqdm(range(total_steps), desc="04_dpo" + ("_online" if args.online else ""), dynamic_ncols=True)
    for step in bar:
        t0 = time.time()
        for g in opt.param_groups:
            g["lr"] = args.lr * lr_at(step, total_steps, args.warmup_ratio, args.min_lr_ratio)
        sums = {k: 0.0 for k in ("loss", "chosen", "rejected", "acc", "margin", "pairs", "gen_s")}
        for _ in range(args.grad_accum):
            idx = next(batches)
            if args.online:
                # 2a. online: two samples per prompt from pi (or pi_mix), labelled by the RM
                tg = time.time()
                prompts = [train_ex[j][0] for j in idx]
                policy.eval()
                ys, _ = sample_responses(policy, prompts * 2, tok.pad_token_id, tok.eos_token_id,
                                      args.max_new_tokens, device, dtype, gen, ref_model, mix)
                policy.train()
                seqs = list(zip(prompts * 2, ys))
                ids, attn, _ = (t.to(device) for t in collate(seqs, rm_pad))
                with torch.inference_mode(), autocast(device, dtype):
                    scores = reward_scores(rm, ids, attn)                          # (2B,)
                preference = online_preference(scores[:len(idx)], scores[len(idx):], args.online_labels, gen)
                # the RM's favourite first (p >= 1/2): the losses are symmetric under (a, b, p) -> (b, a, 1 - p)
                batch = [(p, a, b) if pref >= 0.5 else (p, b, a)
                         for p, a, b, pref in zip(prompts, ys[:len(idx)], ys[len(idx):], preference.tolist())]
                preference = torch.maximum(preference, 1 - preference)            # (B,)
                sums["gen_s"] += time.time() - tg
                with torch.inference_mode():
                    rc, rr, _ = pair_logps(ref_model, batch, tok.pad_token_id, device, dtype, average)
                ref = torch.stack([rc, rr], -1).clone()
            else:
                batch = [train_ex[j] for j in idx]
                ref = torch.tensor([ref_train[j] for j in idx], device=device)     # (B, 2)
                preference = None                                                   # the dataset's label: 1
            # 2b. one forward pass for chosen and rejected, the loss, the backward pass
            pc, pr, n_tok = pair_logps(policy, batch, tok.pad_token_id, device, dtype, average)
            losses, cr, rr_ = preference_loss(args, pc, pr, ref[:, 0], ref[:, 1], preference)
            loss = losses.mean()
            if not torch.isfinite(loss):
                where = f"prompts {idx}" if args.online else f"pairs {idx[0]}..{idx[-1]} of the {args.split} set"
                raise UserError(f"loss is {loss.item()} at step {step + 1}, batch of {where}; nothing was written")
            scaler.scale(loss / args.grad_accum).backward()
            tokens += n_tok
            sums["loss"] += loss.item() / args.grad_accum
            sums["chosen"] += cr.mean().item() / args.grad_accum
            sums["rejected"] += rr_.mean().item() / args.grad_accum
            sums["acc"] += (cr > rr_).float().mean().item() / args.grad_accum
            sums["margin"] += (cr - rr_).mean().item() / args.grad_accum
            sums["pairs"] += len(batch)
        scaler.unscale_(opt)
        grad_norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), args.max_grad_norm)
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        dt = time.time() - t0
        train_time += dt
        gen_time += sums["gen_s"]
        rec = {"step": step + 1, "loss/train": sums["loss"], "rewards/chosen": sums["chosen"],
               "rewards/rejected": sums["rejected"], "rewards/accuracy": sums["acc"],
               "rewards/margin": sums["margin"], "lr": opt.param_groups[0]["lr"], "grad_norm": float(grad_norm),
               "perf/tokens_per_s": tokens / train_time, "perf/peak_mem_mb": peak_memory_mb(device)}
        if args.online:
            rec.update({"online/pairs": sums["pairs"], "perf/generation_share": gen_time / train_time})
            if (step + 1) % args.eval_every == 0 or step + 1 == total_steps:
                rec.update(online_eval(policy, ref_model, rm, rm_pad, [train_ex[j][0] for j in idx], tok,
                                       args, device, dtype, gen))
        metrics.write(json.dumps(rec) + "\n")
        last = rec
        bar.set_postfix(loss=f"{sums['loss']:.3f}", acc=f"{sums['acc']:.2f}", tok_s=f"{rec['perf/tokens_per_s']:.0f}")

    after = implicit_reward_accuracy(policy, test_ex, test_rows, ref_test, args, tok.pad_token_id,
                                     device, dtype, average)
    metrics.write(json.dumps({"step": total_steps, **after}) + "\n")
    metrics.close()

    # 3. save
    policy.config.use_cache = True
    policy.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    wall = time.time() - t_start
    final = {**after, "eval/implicit_accuracy_before": before["eval/implicit_accuracy"], "steps": total_steps,
             "pairs_per_step": per_step, "n_pairs": len(rows), "epochs_seen": total_steps * per_step / len(rows),
             "loss/train_last": last.get("loss/train"), "perf/tokens_per_s": tokens / max(train_time, 1e-9),
             "perf/peak_mem_mb": peak_memory_mb(device)}
    if args.online:
        final.update({k: v for k, v in last.items() if k.startswith(("online/", "objective/"))})
    json.dump({"stage": "04_dpo", "args": vars(args), "sft": str(sft_dir.resolve()), "data": source,
               "dataset": sft_stage["dataset"], "seed": args.seed, "device": str(device), "precision": precision_name(dtype), "precision_reason": precision_reason,
               "versions": versions(), "wall_time_s": wall, "final": final}, open(tmp / "stage.json", "w"), indent=2)
    commit_output(tmp, out)
    print(f"04_dpo: {args.loss}{' online' if args.online else ''} on {source['split']} ({len(rows)} pairs), "
          f"{total_steps} steps, held-out implicit-reward accuracy {before['eval/implicit_accuracy']:.3f} -> "
          f"{after['eval/implicit_accuracy']:.3f}, {final['perf/tokens_per_s']:.0f} tokens/s, {wall:.0f}s wall -> {out}")


def online_preference(scores_a, scores_b, mode, generator):
    """(B,) the preference of response a over b that enters the loss, from RM scores (B,) read as a
    Bradley-Terry model, p = sigmoid(r_a - r_b):
      soft:   p itself, the exact target of IPO's population loss (the default);
      sample: a label drawn from Bernoulli(p), 1 or 0 (its expected loss is the soft one);
      argmax: 1 where r_a > r_b, 0 where r_a < r_b, 1/2 on a tie (deterministic: the IPO minimiser
              then is 1/(2 tau) for any p > 1/2, a different equilibrium)."""
    p = torch.sigmoid((scores_a - scores_b).float())
    if mode == "sample":
        return (torch.rand(p.shape, generator=generator, device=p.device) < p).float()
    if mode == "argmax":
        return (torch.sign(scores_a - scores_b).float() + 1) / 2
    return p


@torch.no_grad()
def online_eval(policy, ref_model, rm, rm_pad, prompts, tok, args, device, dtype, gen):
    """On fresh samples of these prompts: RM win rate of the policy against the reference (ties count
    half), and KL(pi || ref) estimated from the policy's samples (mean of sum_t log pi - log ref)."""
    policy.eval()
    ys_pi, _ = sample_responses(policy, prompts, tok.pad_token_id, tok.eos_token_id, args.max_new_tokens, device, dtype, gen)
    ys_ref, _ = sample_responses(ref_model, prompts, tok.pad_token_id, tok.eos_token_id, args.max_new_tokens, device, dtype, gen)
    ids, attn, _ = (t.to(device) for t in collate(list(zip(prompts * 2, ys_pi + ys_ref)), rm_pad))
    with torch.inference_mode(), autocast(device, dtype):
        s = reward_scores(rm, ids, attn)
        ids, attn, resp = (t.to(device) for t in collate(list(zip(prompts, ys_pi)), tok.pad_token_id))
        kl = (token_logps(policy, ids, attn, resp) - token_logps(ref_model, ids, attn, resp)).sum(-1)
    policy.train()
    n = len(prompts)
    win = ((s[:n] > s[n:]).float() + 0.5 * (s[:n] == s[n:]).float()).mean().item()
    return {"online/win_rate_vs_ref": win, "objective/kl": kl.mean().item(),
            "online/response_len": sum(map(len, ys_pi)) / n}


if __name__ == "__main__":
    run_main(main)
