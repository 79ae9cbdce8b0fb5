"""Stage 05 of MPO: PPO on the hard prompts, with the DPO model as start point and KL reference.

MPO (Gou & Nguyen, 2024, arXiv 2403.19443) ends with PPO on the prompts of the hard set (the
pairs whose labels stage 03 did not trust): the policy starts from the DPO model of stage 04 and, unlike
vanilla RLHF, is regularised towards that DPO model instead of the SFT model. The reward model of
stage 02 scores fresh samples; a value model, initialised from the reward model, is trained beside.
Vanilla PPO, the baseline, is the same script with `--policy` and `--ref` at the SFT directory and
`--prompts all`.

The algorithm (Schulman et al., 2017; for RLHF Ziegler et al., 2019 and Ouyang et al., 2022, Eq. 2),
numbered as in the training loop below:
  1. Rollout: sample a response per prompt from pi (temperature 1, KV cache), then one forward pass
     each for log pi, log ref, the values V and the RM score r(x, y), all under inference mode.
  2. Per-token reward: R_t = -kl_coef * KL_t on every response token, plus r(x, y) on the last one;
     KL_t = log pi - log ref (k1) by default.
  3. GAE (Schulman et al., 2016): delta_t = R_t + gamma V_{t+1} - V_t, A_t = sum_l (gamma lam)^l
     delta_{t+l}; returns = A + V; advantages whitened over the batch.
  4. PPO epochs over minibatches: clipped surrogate -min(rho A, clip(rho, 1 +- eps) A) with
     rho = pi / pi_old; clipped value loss; gradient clipping; optional early stop on approx KL.

Deviations and choices of ours:
  1. Sampling is plain temperature-1 sampling. Top-k, top-p or beam search would make the stored
     log-probs those of another distribution than pi, and the importance ratio rho would be wrong from
     the first step; we do not offer them.
  2. The KL estimator is a flag: k1 (log pi - log ref, TRL and InstructGPT), 'clamped'
     (max(0, log pi - log ref), the MPO author's DeepSpeed-Chat fork) and k3 ((rho - 1) - log rho with
     rho = ref / pi, never negative; http://joschu.net/blog/kl-approx.html). k1 is the default: its sum
     over a sequence is an unbiased estimate of KL(pi || ref) on the policy's own samples, and as a
     per-token reward it gives the exact gradient of the KL penalty. k3's VALUE is unbiased too, but as a
     reward its gradient is biased (it does not point along grad KL, and vanishes as pi nears ref).
  3. Defaults follow TRL's PPO (fixed kl_coef 0.05, 4 PPO epochs, whitened advantages, gamma 1,
     lambda 0.95, clip 0.2, value clip 0.2, vf_coef 0.1). The fork used kl_coef 0.4, reward clipping
     at +-5 and one PPO epoch: `--kl-coef 0.4 --reward-clip 5 --ppo-epochs 1 --kl-estimator clamped`.
  4. Dropout is off in every model (every dropout rate set to 0, config-level attention dropout included,
     as TRL does), and rollouts are sampled in eval mode with the KV cache, so the log-probs of the
     rollout equal those of the first PPO forward pass and the first ratio is exactly 1.

Reads:  runs/<run>/04_dpo/ (policy and reference), 02_reward/ (RM, value init), 03_split/ (prompts)
Writes: runs/<run>/05_ppo/ (or --out)  model + tokenizer, stage.json, metrics.jsonl

    python 05_ppo.py                                       # MPO stage two
    python 05_ppo.py --policy runs/default/01_sft --ref runs/default/01_sft --prompts all \\
        --out runs/default/05_ppo_vanilla                  # vanilla PPO, the baseline
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
    g.add_argument("--policy", default=None, help="policy init (default runs/<run>/04_dpo)")
    g.add_argument("--ref", default=None, help="KL reference, frozen (default: the --policy directory)")
    g.add_argument("--reward", default=None, help="reward model, frozen (default runs/<run>/02_reward)")
    g.add_argument("--value-init", default=None, help="value model init (default: the reward model)")
    g.add_argument("--split-dir", default=None, help="stage 03 directory (default runs/<run>/03_split)")
    g.add_argument("--prompts", default="hard", choices=["hard", "easy", "all"],
                   help="hard: MPO; all: every train prompt (vanilla PPO)")
    g.add_argument("--out", default=None, help="output directory (default runs/<run>/05_ppo)")
    g.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    g = p.add_argument_group("rollout")
    g.add_argument("--steps", type=int, default=20, help="PPO iterations (rollout + optimisation)")
    g.add_argument("--rollout-batch", type=int, default=8, help="prompts per rollout")
    g.add_argument("--max-new-tokens", type=int, default=48, help="response length limit")
    g = p.add_argument_group("reward (step 2)")
    g.add_argument("--kl-coef", type=float, default=0.05, help="kl_coef of R_t (TRL 0.05; the MPO fork 0.4)")
    g.add_argument("--kl-estimator", default="k1", choices=["k1", "clamped", "k3"],
                   help="per-token KL in the reward (see the module docstring)")
    g.add_argument("--adaptive-kl", action="store_true",
                   help="adapt kl_coef towards --target-kl (Ziegler et al., 2019, Sec. 2.2)")
    g.add_argument("--target-kl", type=float, default=6.0, help="adaptive KL: target KL per sequence")
    g.add_argument("--kl-horizon", type=int, default=10000, help="adaptive KL: horizon in samples")
    g.add_argument("--reward-clip", type=float, default=None, help="clip the RM score to +-this (the fork: 5)")
    g.add_argument("--missing-eos-penalty", type=float, default=None,
                   help="subtract this from the score of responses that hit the limit without EOS")
    g = p.add_argument_group("GAE and PPO (steps 3 and 4)")
    g.add_argument("--gamma", type=float, default=1.0, help="discount gamma (1: episodic, TRL)")
    g.add_argument("--lam", type=float, default=0.95, help="GAE lambda (TRL 0.95)")
    g.add_argument("--ppo-epochs", type=int, default=4, help="passes over each rollout (TRL 4; the fork 1)")
    g.add_argument("--minibatch-size", type=int, default=8,
                   help="sequences per PPO minibatch (8 = the rollout: one update per epoch, as TRL's default)")
    g.add_argument("--cliprange", type=float, default=0.2, help="eps of the clipped surrogate")
    g.add_argument("--cliprange-value", type=float, default=0.2, help="clip of the value loss")
    g.add_argument("--vf-coef", type=float, default=0.1, help="weight of the value loss (TRL 0.1)")
    g.add_argument("--no-whiten", action="store_true", help="do not whiten advantages")
    g.add_argument("--target-approx-kl", type=float, default=None,
                   help="stop a rollout's PPO epochs early once approx KL(pi_old || pi) passes this")
    g.add_argument("--lr", type=float, default=1e-6, help="policy learning rate (AdamW, constant)")
    g.add_argument("--value-lr", type=float, default=1e-5, help="value model learning rate")
    g.add_argument("--max-grad-norm", type=float, default=1.0, help="gradient clipping, each model")
    g.add_argument("--max-prompt-len", type=int, default=None,
                   help="prompt tokens kept (from the left); default: stage 01's")
    g.add_argument("--sample-every", type=int, default=5, help="write sample responses every N steps")
    g = p.add_argument_group("system")
    g.add_argument("--seed", type=int, default=0, help="seeds prompt order and sampling")
    g.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    g.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                   help="auto: bf16 autocast on CUDA (fp16 where bf16 is missing); on a CPU bf16 only "
                        "where it computes bf16 natively (measured), else fp32")
    g.add_argument("--grad-checkpointing", action="store_true", help="trade compute for memory")
    return check_ranges(p.parse_args(argv), {
        "steps": AT_LEAST_1, "rollout_batch": AT_LEAST_1, "max_new_tokens": AT_LEAST_1, "kl_coef": NON_NEGATIVE,
        "target_kl": POSITIVE, "kl_horizon": AT_LEAST_1, "reward_clip": POSITIVE, "missing_eos_penalty": NON_NEGATIVE,
        "gamma": FRACTION, "lam": FRACTION, "ppo_epochs": AT_LEAST_1, "minibatch_size": AT_LEAST_1,
        "cliprange": POSITIVE, "cliprange_value": POSITIVE, "vf_coef": NON_NEGATIVE, "target_approx_kl": POSITIVE,
        "lr": POSITIVE, "value_lr": POSITIVE, "max_grad_norm": POSITIVE, "max_prompt_len": AT_LEAST_1,
        "sample_every": AT_LEAST_1})


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



def token_values(value_model, input_ids, attention_mask):
    """V for every position that predicts a next token, (B, T-1), aligned with `token_logps`: the value
    head of a sequence-classification model applied to every hidden state, not only the last."""
    hidden = value_model.base_model(input_ids=input_ids, attention_mask=attention_mask,
                                    position_ids=position_ids_from(attention_mask),
                                    use_cache=False).last_hidden_state                # (B, T, H)
    return value_model.score(hidden[:, :-1]).squeeze(-1).float()                      # (B, T-1)


# ----------------------------------------------------------------------------------------------
# PURE FUNCTIONS: masked statistics, rewards, GAE, the PPO losses

def masked_mean(x, mask):
    return (x * mask).sum() / mask.sum().clamp(min=1)


def masked_whiten(x, mask, eps=1e-8):
    """(x - mean) / std over the masked entries (shift_mean as in TRL); zero elsewhere."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    return (x - mean) * torch.rsqrt(var + eps) * mask


def kl_per_token(logps, ref_logps, estimator="k1"):
    """Per-token KL estimate of KL(pi || ref) on samples of pi (http://joschu.net/blog/kl-approx.html):
    k1 = log pi - log ref; clamped = max(0, k1) (the MPO author's fork); k3 = (rho - 1) - log rho with
    rho = ref / pi (never negative; its value is unbiased, but used as a reward its gradient is not
    that of KL: only k1 gives the exact gradient)."""
    log_ratio = logps - ref_logps
    if estimator == "k1":
        return log_ratio
    if estimator == "clamped":
        return log_ratio.clamp(min=0)
    if estimator == "k3":
        return torch.expm1(-log_ratio) + log_ratio
    raise ValueError(f"unknown KL estimator {estimator!r}")


def compute_rewards(logps, ref_logps, mask, scores, kl_coef, estimator="k1"):
    """Step 2: R_t = -kl_coef * KL_t on every response token, plus the sequence score on the LAST
    response token of each row (wherever padding puts it).
    logps, ref_logps, mask: (B, L), mask True on response tokens; scores: (B,).
    Returns (rewards (B, L), kl (B, L)), zero off the mask."""
    kl = kl_per_token(logps, ref_logps, estimator) * mask
    rewards = -kl_coef * kl
    L = mask.shape[1]
    last = L - 1 - mask.flip(-1).to(torch.long).argmax(-1)                         # (B,)
    rewards[torch.arange(len(scores), device=scores.device), last] += scores
    return rewards, kl


def gae(rewards, values, mask, gamma=1.0, lam=0.95):
    """Step 3, generalised advantage estimation over the masked tokens of each row (Schulman et al.,
    2016, Eq. 16): delta_t = R_t + gamma V_{t'} - V_t, A_t = delta_t + gamma lam A_{t'}, where t' is
    the next masked position of the row (0 after the last: the episode ends with the response).
    rewards, values, mask: (B, L). Returns (advantages, returns), each (B, L), zero off the mask."""
    B, L = rewards.shape
    adv = torch.zeros_like(rewards)
    next_value = torch.zeros(B, dtype=rewards.dtype, device=rewards.device)
    next_adv = torch.zeros_like(next_value)
    for t in reversed(range(L)):
        m = mask[:, t]
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        a = delta + gamma * lam * next_adv
        adv[:, t] = torch.where(m, a, torch.zeros_like(a))
        next_value = torch.where(m, values[:, t], next_value)
        next_adv = torch.where(m, a, next_adv)
    return adv, (adv + values) * mask


def ppo_policy_loss(logps, old_logps, advantages, mask, cliprange=0.2):
    """Step 4, clipped surrogate (Schulman et al., 2017, Eq. 7), as a loss to minimise:
        rho = exp(log pi - log pi_old);  L = mean_t max(-A rho, -A clip(rho, 1 - eps, 1 + eps)).
    All inputs (B, L). Returns (loss, clipfrac, approx_kl), the last two detached; approx_kl is
    mean 0.5 (log rho)^2, an estimate of KL(pi_old || pi)."""
    log_ratio = logps - old_logps
    ratio = torch.exp(log_ratio)
    pg1 = -advantages * ratio
    pg2 = -advantages * ratio.clamp(1 - cliprange, 1 + cliprange)
    loss = masked_mean(torch.max(pg1, pg2), mask)
    clipfrac = masked_mean((pg2 > pg1).float(), mask).detach()
    approx_kl = masked_mean(0.5 * log_ratio ** 2, mask).detach()
    return loss, clipfrac, approx_kl


def ppo_value_loss(values, old_values, returns, mask, cliprange_value=0.2):
    """Step 4, clipped value loss (as in OpenAI's baselines and TRL):
        V_clip = V_old + clip(V - V_old, -c, c);  L = 0.5 mean_t max((V - G)^2, (V_clip - G)^2).
    All inputs (B, L). Returns (loss, value clipfrac)."""
    v_clipped = old_values + (values - old_values).clamp(-cliprange_value, cliprange_value)
    l1, l2 = (values - returns) ** 2, (v_clipped - returns) ** 2
    return 0.5 * masked_mean(torch.max(l1, l2), mask), masked_mean((l2 > l1).float(), mask).detach()


def adaptive_kl_coef(kl_coef, current_kl, target_kl, n_samples, horizon):
    """Ziegler et al. (2019), Sec. 2.2: beta <- beta * (1 + K_beta e), e = clip(KL / target - 1, +-0.2),
    K_beta = n_samples / horizon."""
    error = max(-0.2, min(0.2, current_kl / target_kl - 1))
    return kl_coef * (1 + error * n_samples / horizon)


# ----------------------------------------------------------------------------------------------
# MAIN

def load_prompts(args, split_dir, sft_dir):
    if args.prompts == "all":
        rows = read_jsonl(Path(sft_dir) / "data_train.jsonl")
    else:
        if not (split_dir / f"{args.prompts}.jsonl").exists():
            raise UserError(f"{split_dir} is not a finished 03_split directory; run `python 03_split.py` "
                            f"first (or pass --prompts all)")
        rows = read_jsonl(split_dir / f"{args.prompts}.jsonl")
    seen, prompts = set(), []
    for r in rows:  # one entry per distinct prompt
        key = json.dumps(r["prompt"], ensure_ascii=False)
        if key not in seen:
            seen.add(key)
            prompts.append(r)
    if not prompts:
        raise UserError(f"no prompts in the {args.prompts} set")
    return prompts


def main(args, state):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer
    policy_dir = Path(args.policy or f"runs/{args.run}/04_dpo")
    ref_dir = Path(args.ref or policy_dir)
    rm_dir = Path(args.reward or f"runs/{args.run}/02_reward")
    value_dir = Path(args.value_init or rm_dir)
    split_dir = Path(args.split_dir or f"runs/{args.run}/03_split")
    out = Path(args.out or f"runs/{args.run}/05_ppo")
    need_stage(policy_dir, "policy (04_dpo or 01_sft)", "python 04_dpo.py")
    need_stage(ref_dir, "reference (04_dpo or 01_sft)", "python 04_dpo.py")
    rm_stage = need_stage(rm_dir, "02_reward", "python 02_reward.py")
    for path, head, flag in ((policy_dir, "causal", "--policy"), (ref_dir, "causal", "--ref"),
                             (rm_dir, "reward", "--reward"), (value_dir, "reward", "--value-init")):
        check_model_dir(path, head, flag)
    sft_dir = inherited_dir(rm_stage["sft"], rm_dir)
    inherit_lengths(args, need_stage(sft_dir, "01_sft", "python 01_sft.py"))
    print(f"inherited dataset {rm_stage['dataset']['name']!r}; policy {policy_dir}, KL reference {ref_dir}, "
          f"RM {rm_dir}, value init {value_dir}, prompts: {args.prompts}")
    for flag in ("steps", "rollout_batch", "max_new_tokens", "ppo_epochs", "minibatch_size"):
        if getattr(args, flag) < 1:
            raise UserError(f"--{flag.replace('_', '-')} must be at least 1")
    device = pick_device(args.device)
    dtype, precision_reason = pick_precision(args.precision, device)
    if out.exists() and not args.overwrite:
        raise UserError(f"{out} exists; pass --overwrite to replace it")
    seed_everything(args.seed)
    t_start = time.time()

    tok = AutoTokenizer.from_pretrained(policy_dir)
    # fp32, dropout off in every model, so rollout and training log-probs agree (deviation 4)
    policy = fp32_no_dropout(AutoModelForCausalLM.from_pretrained(policy_dir)).to(device).eval()
    ref = fp32_no_dropout(AutoModelForCausalLM.from_pretrained(ref_dir)).to(device).eval()
    rm = fp32_no_dropout(AutoModelForSequenceClassification.from_pretrained(rm_dir)).to(device).eval()
    value = fp32_no_dropout(AutoModelForSequenceClassification.from_pretrained(value_dir)).to(device).eval()
    for m in (ref, rm):
        m.requires_grad_(False)
    if args.grad_checkpointing:
        for m in (policy, value):
            m.gradient_checkpointing_enable()
            m.train()  # checkpointing is active in train mode only; dropout is off (fp32_no_dropout)
    prompts = load_prompts(args, split_dir, sft_dir)
    prompt_ids = [encode(tok, r["prompt"], "", args.max_prompt_len, 2)[0] for r in prompts]
    opt_pi = make_optimizer(policy.parameters(), args.lr, 0.0, device)
    opt_v = make_optimizer(value.parameters(), args.value_lr, 0.0, device)
    scaler = torch.amp.GradScaler(enabled=dtype == torch.float16)
    gen = torch.Generator(device=device).manual_seed(args.seed)
    rng = random.Random(args.seed)
    batches = epoch_batches(len(prompts), args.rollout_batch, rng)   # every prompt once per epoch
    kl_coef = args.kl_coef
    state["tmp"] = tmp = prepare_output(out, args.overwrite)
    metrics = open(tmp / "metrics.jsonl", "w")
    tokens, gen_time, train_time, history = 0, 0.0, 0.0, []

    bar = tqdm(range(args.steps), desc="05_ppo", dynamic_ncols=True)
    for step in bar:
        idx = next(batches)
        batch_prompts = [prompt_ids[j] for j in idx]

        # 1. rollout: sample, then fresh forward passes for log pi, log ref, V and the score
        t0 = time.time()
        responses, _ = sample_responses(policy, batch_prompts, tok.pad_token_id, tok.eos_token_id,
                                        args.max_new_tokens, device, dtype, gen)
        t_gen = time.time() - t0
        seqs = list(zip(batch_prompts, responses))
        ids, attn, resp = (t.to(device) for t in collate(seqs, tok.pad_token_id))
        mask = resp[:, 1:]                                                         # (B, T-1)
        with torch.inference_mode(), autocast(device, dtype):
            old_logps = token_logps(policy, ids, attn, resp)                       # (B, T-1)
            ref_logps = token_logps(ref, ids, attn, resp)                          # (B, T-1)
            old_values = token_values(value, ids, attn) * mask                     # (B, T-1)
            scores = reward_scores(rm, ids, attn)                                  # (B,)
        old_logps, ref_logps, old_values, scores = (x.clone() for x in (old_logps, ref_logps, old_values, scores))
        has_eos = torch.tensor([len(r) > 0 and r[-1] == tok.eos_token_id for r in responses], device=device)
        score_used = scores.clone()
        if args.reward_clip is not None:
            score_used = score_used.clamp(-args.reward_clip, args.reward_clip)
        if args.missing_eos_penalty is not None:
            score_used = score_used - args.missing_eos_penalty * (~has_eos).float()

        # 2. per-token rewards; 3. GAE, returns, whitened advantages
        rewards, kl = compute_rewards(old_logps, ref_logps, mask, score_used, kl_coef, args.kl_estimator)
        advantages, returns = gae(rewards, old_values, mask, args.gamma, args.lam)
        if not args.no_whiten:
            advantages = masked_whiten(advantages, mask)

        # 4. PPO epochs over minibatches
        stats = {k: [] for k in ("pg_loss", "vf_loss", "clipfrac", "vf_clipfrac", "approx_kl", "entropy", "ratio")}
        early_stop = False
        for epoch in range(args.ppo_epochs):
            perm = torch.randperm(len(seqs), generator=torch.Generator().manual_seed(args.seed * 1000 + step * 10 + epoch))
            for s in range(0, len(seqs), args.minibatch_size):
                mb = perm[s:s + args.minibatch_size].to(device)
                m_ids, m_attn, m_resp, m_mask = ids[mb], attn[mb], resp[mb], mask[mb]
                with autocast(device, dtype):
                    new_logps, entropy = token_logps(policy, m_ids, m_attn, m_resp, with_entropy=True)
                    new_values = token_values(value, m_ids, m_attn)
                pg_loss, clipfrac, approx_kl = ppo_policy_loss(new_logps, old_logps[mb], advantages[mb], m_mask,
                                                               args.cliprange)
                vf_loss, vf_clipfrac = ppo_value_loss(new_values, old_values[mb], returns[mb], m_mask,
                                                      args.cliprange_value)
                loss = pg_loss + args.vf_coef * vf_loss
                if not torch.isfinite(loss):
                    raise UserError(f"loss is {loss.item()} at step {step + 1}, PPO epoch {epoch + 1}, "
                                    f"minibatch {s // args.minibatch_size + 1}; nothing was written")
                scaler.scale(loss).backward()
                scaler.unscale_(opt_pi)
                scaler.unscale_(opt_v)
                torch.nn.utils.clip_grad_norm_(policy.parameters(), args.max_grad_norm)
                torch.nn.utils.clip_grad_norm_(value.parameters(), args.max_grad_norm)
                scaler.step(opt_pi)
                scaler.step(opt_v)
                scaler.update()
                opt_pi.zero_grad(set_to_none=True)
                opt_v.zero_grad(set_to_none=True)
                for k, v in (("pg_loss", pg_loss), ("vf_loss", vf_loss), ("clipfrac", clipfrac),
                             ("vf_clipfrac", vf_clipfrac), ("approx_kl", approx_kl),
                             ("entropy", masked_mean(entropy, m_mask)),
                             ("ratio", masked_mean(torch.exp(new_logps - old_logps[mb]), m_mask))):
                    stats[k].append(v.item())
            if args.target_approx_kl is not None and sum(stats["approx_kl"][-math.ceil(len(seqs) / args.minibatch_size):]) \
                    / math.ceil(len(seqs) / args.minibatch_size) > args.target_approx_kl:
                early_stop = True
                break
        t_total = time.time() - t0
        gen_time += t_gen
        train_time += t_total - t_gen
        tokens += int(attn.sum())  # prompt + response tokens of the rollout, per second of the iteration

        # logs
        seq_kl = kl.sum(-1)                                                        # (B,)
        rec = {"step": step + 1, "objective/scores": scores.mean().item(),
               "objective/kl": seq_kl.mean().item(), "objective/kl_coef": kl_coef,
               "objective/rlhf_reward": (score_used - kl_coef * seq_kl).mean().item(),
               "ppo/policy_loss": sum(stats["pg_loss"]) / len(stats["pg_loss"]),
               "ppo/value_loss": sum(stats["vf_loss"]) / len(stats["vf_loss"]),
               "ppo/clipfrac": sum(stats["clipfrac"]) / len(stats["clipfrac"]),
               "ppo/value_clipfrac": sum(stats["vf_clipfrac"]) / len(stats["vf_clipfrac"]),
               "ppo/approx_kl": sum(stats["approx_kl"]) / len(stats["approx_kl"]),
               "ppo/first_ratio": stats["ratio"][0], "ppo/early_stop": early_stop,
               "objective/entropy": sum(stats["entropy"]) / len(stats["entropy"]),
               "response/length": mask.sum(-1).float().mean().item(), "response/eos_rate": has_eos.float().mean().item(),
               "time/generation_s": t_gen, "time/training_s": t_total - t_gen,
               "perf/tokens_per_s": tokens / (gen_time + train_time), "perf/peak_mem_mb": peak_memory_mb(device)}
        if step % args.sample_every == 0 or step + 1 == args.steps:
            rec["samples"] = [{"prompt": prompts[j]["prompt"][-1]["content"], "response": tok.decode(r, skip_special_tokens=True),
                               "score": sc} for j, r, sc in list(zip(idx, responses, scores.tolist()))[:3]]
        metrics.write(json.dumps(rec) + "\n")
        metrics.flush()
        history.append(rec)
        bar.set_postfix(score=f"{rec['objective/scores']:.2f}", kl=f"{rec['objective/kl']:.2f}",
                        clip=f"{rec['ppo/clipfrac']:.2f}")
        if args.adaptive_kl:
            kl_coef = adaptive_kl_coef(kl_coef, rec["objective/kl"], args.target_kl, len(seqs), args.kl_horizon)
    metrics.close()

    # save the policy (the value model is a training aid and is not kept)
    policy.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    wall = time.time() - t_start
    k = max(1, len(history) // 4)
    first = {m: sum(h[m] for h in history[:k]) / k for m in ("objective/scores", "objective/kl")}
    last = {m: sum(h[m] for h in history[-k:]) / k for m in ("objective/scores", "objective/kl")}
    final = {"scores_first_quarter": first["objective/scores"], "scores_last_quarter": last["objective/scores"],
             "kl_first_quarter": first["objective/kl"], "kl_last_quarter": last["objective/kl"],
             "steps": args.steps, "perf/tokens_per_s": tokens / max(gen_time + train_time, 1e-9),
             "perf/generation_share": gen_time / max(gen_time + train_time, 1e-9),
             "perf/peak_mem_mb": peak_memory_mb(device)}
    json.dump({"stage": "05_ppo", "args": vars(args), "policy_init": str(policy_dir.resolve()), "ref": str(ref_dir.resolve()),
               "reward": str(rm_dir.resolve()), "sft": str(sft_dir.resolve()), "dataset": rm_stage["dataset"],
               "prompts": args.prompts, "n_prompts": len(prompts), "seed": args.seed, "device": str(device),
               "precision": precision_name(dtype), "precision_reason": precision_reason, "versions": versions(), "wall_time_s": wall, "final": final},
              open(tmp / "stage.json", "w"), indent=2)
    commit_output(tmp, out)
    print(f"05_ppo: {args.steps} steps on {len(prompts)} {args.prompts} prompts; RM score "
          f"{first['objective/scores']:.3f} -> {last['objective/scores']:.3f}, KL {first['objective/kl']:.3f} -> "
          f"{last['objective/kl']:.3f} (first and last quarter), generation {final['perf/generation_share']:.0%} "
          f"of {gen_time + train_time:.0f}s, {wall:.0f}s wall -> {out}")


if __name__ == "__main__":
    run_main(main)
