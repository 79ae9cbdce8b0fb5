"""Stage 02 of MPO: a Bradley-Terry reward model (RM) trained on the preference pairs.

MPO (Gou & Nguyen, 2024, arXiv 2403.19443) uses the RM twice: to split the pairs into an easy and a
hard set by reward gap (stage 03), and as the reward of PPO (stage 05). The RM is the SFT model with
its LM head replaced by a scalar head, r(x, y) = w^T h_last, read at the last real token of
prompt + response, and trained with the Bradley-Terry loss (Ouyang et al., 2022, Eq. 1):
    L_RM = -log sigmoid(r(x, y_w) - r(x, y_l)).

Deviations and choices of ours:
  1. Optional reward centring (Eisenstein et al., 2023): `--center-coef c` adds c * (r_w + r_l)^2. The
     Bradley-Terry loss sees only differences r_w - r_l, so it leaves the scores' location free; the
     term pins it near zero (PPO's rewards then do not drift). It changes no gap d: the |d| thresholds
     of stage 03 depend on the scores' scale, which centring does not fix.
  2. The pad token is set to a token other than EOS, so `AutoModelForSequenceClassification` reads the
     score at the EOS that closes the response, exactly where this script reads it.
  3. Dropout is off and the weights train in fp32, whatever the checkpoint says (as in every stage).

Reads:  runs/<run>/01_sft/ (model, tokenizer, data_train.jsonl, data_test.jsonl)
Writes: runs/<run>/02_reward/  AutoModelForSequenceClassification(num_labels=1) + tokenizer,
        stage.json, metrics.jsonl

    python 02_reward.py                                  # after 01_sft.py
    python 02_reward.py --precision bf16 --max-steps 60  # faster on CPU
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
    g.add_argument("--sft", default=None, help="SFT directory (default runs/<run>/01_sft)")
    g.add_argument("--out", default=None, help="output directory (default runs/<run>/02_reward)")
    g.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=float, default=1.0, help="passes over the train pairs")
    g.add_argument("--max-steps", type=int, default=-1, help="stop after this many optimiser steps (-1: epochs)")
    g.add_argument("--batch-size", type=int, default=8, help="pairs per micro-batch (2x sequences)")
    g.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimiser step")
    g.add_argument("--lr", type=float, default=2e-5, help="peak learning rate of AdamW")
    g.add_argument("--weight-decay", type=float, default=0.0, help="AdamW weight decay")
    g.add_argument("--warmup-ratio", type=float, default=0.1, help="share of steps of linear warm-up")
    g.add_argument("--min-lr-ratio", type=float, default=0.1, help="cosine decay ends at lr * this")
    g.add_argument("--max-grad-norm", type=float, default=1.0, help="gradient clipping (global L2 norm)")
    g.add_argument("--center-coef", type=float, default=0.01,
                   help="reward centring: adds coef * (r_w + r_l)^2 to the loss (0 turns it off)")
    g.add_argument("--max-prompt-len", type=int, default=None,
                   help="prompt tokens kept (from the left); default: stage 01's")
    g.add_argument("--max-response-len", type=int, default=None, help="response tokens kept; default: stage 01's")
    g.add_argument("--eval-batch-size", type=int, default=16, help="pairs per held-out batch")
    g = p.add_argument_group("system")
    g.add_argument("--seed", type=int, default=0, help="seeds data order and the score head")
    g.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    g.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                   help="auto: bf16 autocast on CUDA (fp16 where bf16 is missing); on a CPU bf16 only "
                        "where it computes bf16 natively (measured), else fp32")
    g.add_argument("--grad-checkpointing", action="store_true", help="trade compute for memory")
    return check_ranges(p.parse_args(argv), {
        "epochs": POSITIVE, "max_steps": STEPS, "batch_size": AT_LEAST_1, "grad_accum": AT_LEAST_1,
        "lr": POSITIVE, "weight_decay": NON_NEGATIVE, "warmup_ratio": FRACTION, "min_lr_ratio": FRACTION,
        "max_grad_norm": POSITIVE, "center_coef": NON_NEGATIVE, "max_prompt_len": AT_LEAST_1,
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


class ArgParser(argparse.ArgumentParser):
    """argparse with a one-line error (no usage block): `prog: error: argument --lr: invalid float value`."""

    def error(self, message):
        print(f"{self.prog}: error: {message} (see --help)", file=sys.stderr)
        sys.exit(2)


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


def set_distinct_pad(tokenizer, model):
    """Make the pad token differ from EOS, so that `AutoModelForSequenceClassification` (which reads the
    score at the last non-pad token) reads it at the EOS that closes the response."""
    if tokenizer.pad_token_id is not None and tokenizer.pad_token_id != tokenizer.eos_token_id:
        model.config.pad_token_id = tokenizer.pad_token_id
        return
    if tokenizer.unk_token_id is not None and tokenizer.unk_token_id != tokenizer.eos_token_id:
        tokenizer.pad_token = tokenizer.unk_token
    else:
        tokenizer.add_special_tokens({"pad_token": "<|pad|>"})
        model.resize_token_embeddings(len(tokenizer))
    model.config.pad_token_id = tokenizer.pad_token_id


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


# ----------------------------------------------------------------------------------------------
# LOSS

def bradley_terry_loss(chosen_rewards, rejected_rewards, center_coef=0.0):
    """Bradley-Terry loss of a reward model (Ouyang et al., 2022, Eq. 1; as in arXiv 2403.19443):
        L = mean( -log sigmoid(r_w - r_l) + center_coef * (r_w + r_l)^2 ).
    chosen_rewards, rejected_rewards: (B,). Returns (loss, accuracy, margin), the last two detached."""
    margin = chosen_rewards - rejected_rewards                                     # (B,)
    loss = -F.logsigmoid(margin) + center_coef * (chosen_rewards + rejected_rewards) ** 2
    return loss.mean(), (margin > 0).float().mean().detach(), margin.mean().detach()


# ----------------------------------------------------------------------------------------------
# MAIN

def pair_batch(examples, pad_id):
    """Chosen and rejected of every pair in one batch of 2B sequences: rows [0, B) chosen, [B, 2B)
    rejected, so one forward pass scores both."""
    seqs = [(p, c) for p, c, _ in examples] + [(p, r) for p, _, r in examples]
    ids, attn, _ = collate(seqs, pad_id)
    return ids, attn


@torch.no_grad()
def evaluate(rm, examples, rows, pad_id, batch_size, device, dtype):
    """Held-out pairwise accuracy, mean margin, and (where rows carry gold scores) agreement of the
    RM's order with the gold order on pairs whose gold scores differ."""
    rm.eval()
    margins = []
    for i in range(0, len(examples), batch_size):
        ids, attn = (t.to(device) for t in pair_batch(examples[i:i + batch_size], pad_id))
        with autocast(device, dtype):
            r = reward_scores(rm, ids, attn)
        n = len(r) // 2
        margins += (r[:n] - r[n:]).tolist()
    rm.train()
    out = {"eval/accuracy": sum(m > 0 for m in margins) / len(margins),
           "eval/margin": sum(margins) / len(margins)}
    gold = [(m, r["gold_chosen"] - r["gold_rejected"]) for m, r in zip(margins, rows) if "gold_chosen" in r]
    gold = [(m, g) for m, g in gold if g != 0]
    if gold:
        out["eval/gold_agreement"] = sum((m > 0) == (g > 0) for m, g in gold) / len(gold)
        out["eval/label_gold_agreement"] = sum(g > 0 for _, g in gold) / len(gold)
    return out


def main(args, state):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    sft_dir = Path(args.sft or f"runs/{args.run}/01_sft")
    out = Path(args.out or f"runs/{args.run}/02_reward")
    sft_stage = need_stage(sft_dir, "01_sft", "python 01_sft.py")
    inherit_lengths(args, sft_stage)
    print(f"inherited dataset {sft_stage['dataset']['name']!r} from {sft_dir}")
    device = pick_device(args.device)
    dtype, precision_reason = pick_precision(args.precision, device)
    if out.exists() and not args.overwrite:
        raise UserError(f"{out} exists; pass --overwrite to replace it")
    seed_everything(args.seed)
    t_start = time.time()

    # 1. model: the SFT model with a scalar head (randomly initialised) in place of the LM head
    tok = AutoTokenizer.from_pretrained(sft_dir)
    check_model_dir(sft_dir, "causal", "--sft")
    rm = fp32_no_dropout(AutoModelForSequenceClassification.from_pretrained(sft_dir, num_labels=1))
    set_distinct_pad(tok, rm)
    rm.to(device).train()
    rm.config.use_cache = False
    if args.grad_checkpointing:
        rm.gradient_checkpointing_enable()

    # 2. data: (prompt_ids, chosen_ids, rejected_ids)
    def enc(r):
        p, c = encode(tok, r["prompt"], r["chosen"], args.max_prompt_len, args.max_response_len)
        return p, c, encode(tok, r["prompt"], r["rejected"], args.max_prompt_len, args.max_response_len)[1]
    train_rows = read_jsonl(sft_dir / "data_train.jsonl")
    test_rows = [r for r in read_jsonl(sft_dir / "data_test.jsonl") if r.get("chosen")]
    train_ex, test_ex = [enc(r) for r in train_rows], [enc(r) for r in test_rows]

    opt = make_optimizer(rm.parameters(), args.lr, args.weight_decay, device)
    scaler = torch.amp.GradScaler(enabled=dtype == torch.float16)
    per_step = args.batch_size * args.grad_accum
    total_steps = args.max_steps if args.max_steps > 0 else max(1, math.ceil(len(train_ex) * args.epochs / per_step))
    state["tmp"] = tmp = prepare_output(out, args.overwrite)
    metrics = open(tmp / "metrics.jsonl", "w")
    before = evaluate(rm, test_ex, test_rows, tok.pad_token_id, args.eval_batch_size, device, dtype)
    metrics.write(json.dumps({"step": 0, **before}) + "\n")

    # 3. training loop
    rng = random.Random(args.seed)
    batches, tokens, train_time = epoch_batches(len(train_ex), args.batch_size, rng), 0, 0.0
    bar = tqdm(range(total_steps), desc="02_reward", dynamic_ncols=True)
    for step in bar:
        t0 = time.time()
        for g in opt.param_groups:
            g["lr"] = args.lr * lr_at(step, total_steps, args.warmup_ratio, args.min_lr_ratio)
        logs = {"loss": 0.0, "acc": 0.0, "margin": 0.0}
        for _ in range(args.grad_accum):
            mb = [train_ex[j] for j in next(batches)]
            ids, attn = (t.to(device) for t in pair_batch(mb, tok.pad_token_id))
            with autocast(device, dtype):
                r = reward_scores(rm, ids, attn)                                   # (2B,)
            loss, acc, margin = bradley_terry_loss(r[:len(mb)], r[len(mb):], args.center_coef)
            if not torch.isfinite(loss):
                raise UserError(f"loss is {loss.item()} at step {step}; nothing was written")
            scaler.scale(loss / args.grad_accum).backward()
            for k, v in (("loss", loss), ("acc", acc), ("margin", margin)):
                logs[k] += v.item() / args.grad_accum
            tokens += int(attn.sum())
        scaler.unscale_(opt)
        grad_norm = torch.nn.utils.clip_grad_norm_(rm.parameters(), args.max_grad_norm)
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        train_time += time.time() - t0
        rec = {"step": step + 1, "loss/train": logs["loss"], "train/accuracy": logs["acc"],
               "train/margin": logs["margin"], "lr": opt.param_groups[0]["lr"], "grad_norm": float(grad_norm),
               "perf/tokens_per_s": tokens / train_time, "perf/peak_mem_mb": peak_memory_mb(device)}
        metrics.write(json.dumps(rec) + "\n")
        bar.set_postfix(loss=f"{logs['loss']:.3f}", acc=f"{logs['acc']:.2f}", tok_s=f"{rec['perf/tokens_per_s']:.0f}")

    after = evaluate(rm, test_ex, test_rows, tok.pad_token_id, args.eval_batch_size, device, dtype)
    metrics.write(json.dumps({"step": total_steps, **after}) + "\n")
    metrics.close()

    # 4. save: loads with AutoModelForSequenceClassification.from_pretrained alone
    rm.config.use_cache = True
    rm.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    wall = time.time() - t_start
    final = {**after, "eval/accuracy_before": before["eval/accuracy"], "steps": total_steps,
             "perf/tokens_per_s": tokens / max(train_time, 1e-9), "perf/peak_mem_mb": peak_memory_mb(device)}
    json.dump({"stage": "02_reward", "args": vars(args), "sft": str(sft_dir.resolve()), "dataset": sft_stage["dataset"],
               "seed": args.seed, "device": str(device), "precision": precision_name(dtype), "precision_reason": precision_reason, "versions": versions(),
               "wall_time_s": wall, "final": final}, open(tmp / "stage.json", "w"), indent=2)
    commit_output(tmp, out)
    gold = f", gold agreement {after['eval/gold_agreement']:.3f} (labels agree with gold " \
           f"{after['eval/label_gold_agreement']:.3f})" if "eval/gold_agreement" in after else ""
    print(f"02_reward: {total_steps} steps, held-out accuracy {before['eval/accuracy']:.3f} -> "
          f"{after['eval/accuracy']:.3f}, margin {after['eval/margin']:.2f}{gold}, "
          f"{final['perf/tokens_per_s']:.0f} tokens/s, {wall:.0f}s wall -> {out}")


if __name__ == "__main__":
    run_main(main)
