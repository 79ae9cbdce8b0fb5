"""Stage 06 of MPO: compare policy checkpoints on the held-out test prompts.

The MPO paper (Gou & Nguyen, 2024, arXiv 2403.19443, its experiments) compares MPO with vanilla DPO and vanilla
PPO by reward-model score and by GPT-4 win rates against a baseline. This stage does the same for any
set of policy directories, each sampled on the same test prompts with the same settings and seeds:
  - mean RM score (the reward model of stage 02);
  - on the built-in task, the mean gold score (`builtin_task.gold_score`, the stand-in for GPT-4);
  - win rate against the baseline (the SFT policy, found by its stage.json, or --baseline), judged by
    the gold score (built-in) and by the RM, prompt by prompt, ties counted as half;
  - KL(pi || baseline) estimated from the policy's own samples, mean over prompts of
    sum_t log pi(y_t) - log base(y_t) (the k1 estimator; samples at temperature 1 make it unbiased);
  - response length and the share of responses that end with EOS. A response that hits the length limit
    without EOS is scored as it stands: the RM reads it at its last token (not the EOS it was trained
    to read), the gold judge reads its text;
  - on the built-in task, the gold score per prompt family, and the refusal rate on harmful requests and
    on their harmless look-alikes (refusing the first is right, refusing the second is wrong);
  - each policy's training budget (steps, pairs or rollouts seen, epochs), from its stage.json.
Every mean and win rate comes with a 95% bootstrap interval (percentile method) that resamples requests:
the wordings of one request (built-in rows share `meta.request`) move together, as they are not
independent prompts; prompts of other datasets are each their own request.

With --combine, the 06_eval outputs of runs with different seeds become one report: each metric's mean
and standard deviation over seeds, and the paper's claims (MPO against vanilla DPO and vanilla PPO, DPO
on easy against DPO on all pairs, the DPO reference against the SFT reference) as paired differences
on the same prompts, per seed and pooled, with a bootstrap interval that resamples requests within each
seed (it covers prompt noise; the spread of the per-seed differences shows the training noise).

Reads:  policy directories (default: every policy of runs/<run>/), 02_reward/, 01_sft/ (test prompts)
Writes: runs/<run>/06_eval/  report.md, results.json, samples.jsonl, reward_vs_kl.png (with matplotlib)

    python 06_eval.py                                       # every policy of runs/default
    python 06_eval.py runs/default/04_dpo runs/default/05_ppo --max-prompts 50
    python 06_eval.py --combine runs/cpu_s0 runs/cpu_s1 runs/cpu_s2 --out runs/cpu_seeds
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

POLICY_PREFIXES = ("01_sft", "04_", "05_")
# the report's columns: key in results.json, heading
METRICS = [("rm", "RM score"), ("gold", "gold score"), ("win_gold", "gold win vs baseline"),
           ("win_rm", "RM win vs baseline"), ("kl", "KL to baseline"), ("length", "length"),
           ("eos", "ends with EOS"), ("refusal_harmful", "refuses harmful"), ("refusal_harmless", "refuses harmless")]


# ----------------------------------------------------------------------------------------------
# ARGUMENTS

def parse_args(argv=None):
    p = ArgParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("policies", nargs="*", help="policy directories (default: 01_sft, 04_*, 05_* of the run)")
    g = p.add_argument_group("inputs and outputs")
    g.add_argument("--run", default="default", help="run name: inputs and outputs under runs/<run>/")
    g.add_argument("--baseline", default=None,
                   help="the policy that win rates and KL are measured against (default: the one policy whose "
                        "stage.json says 01_sft, else the SFT the reward model was trained from)")
    g.add_argument("--reward", default=None, help="reward model (default runs/<run>/02_reward)")
    g.add_argument("--out", default=None, help="output directory (default runs/<run>/06_eval; with "
                                               "--combine, runs/combined)")
    g.add_argument("--combine", nargs="+", metavar="DIR", default=None,
                   help="instead of evaluating, combine finished 06_eval directories (or run directories) "
                        "of several seeds into one report: means and spread over seeds, and the paper's "
                        "comparisons as paired differences")
    g.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    g = p.add_argument_group("sampling")
    g.add_argument("--max-prompts", type=int, default=0, help="evaluate on the first N test prompts (0: all)")
    g.add_argument("--samples-per-prompt", type=int, default=1, help="responses per prompt and policy")
    g.add_argument("--max-new-tokens", type=int, default=48, help="response length limit")
    g.add_argument("--batch-size", type=int, default=32, help="prompts sampled per batch")
    g.add_argument("--max-prompt-len", type=int, default=None,
                   help="prompt tokens kept (from the left); default: stage 01's")
    g.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the 95%% intervals")
    g = p.add_argument_group("system")
    g.add_argument("--seed", type=int, default=0, help="the sampling seed, the same for every policy")
    g.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    g.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                   help="auto: bf16 autocast on CUDA (fp16 where bf16 is missing); on a CPU bf16 only "
                        "where it computes bf16 natively (measured), else fp32")
    return check_ranges(p.parse_args(argv), {
        "max_prompts": NON_NEGATIVE, "samples_per_prompt": AT_LEAST_1, "max_new_tokens": AT_LEAST_1,
        "batch_size": AT_LEAST_1, "max_prompt_len": AT_LEAST_1, "bootstrap": AT_LEAST_1})


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



# ----------------------------------------------------------------------------------------------
# STATISTICS (pure functions)

def win_rate(scores, baseline_scores):
    """Per-item wins against the baseline: 1 if higher, 0.5 if equal, 0 if lower. Returns (N,) list."""
    return [1.0 if a > b else 0.5 if a == b else 0.0 for a, b in zip(scores, baseline_scores)]


def mean(xs):
    return sum(xs) / len(xs) if xs else float("nan")


def clusters_of(values, keys):
    """The values grouped by key, in order of first appearance: [[values of key 1], [values of key 2], ...]."""
    groups = {}
    for v, k in zip(values, keys):
        groups.setdefault(k, []).append(v)
    return list(groups.values())


def bootstrap_ci(groups, n_resamples=1000, seed=0, alpha=0.05):
    """Percentile bootstrap interval of the mean over groups of each group's mean. A group (one seed's
    run) is a list of clusters, a cluster the values of the prompts that share a request; each resample
    draws a group's clusters with replacement and takes the mean of all their values. Prompts that are
    wordings of one request are not independent: resampling them one by one would narrow the interval.
    With one value per cluster this is the ordinary bootstrap over prompts."""
    groups = [g for g in groups if g]
    if not groups:
        return float("nan"), float("nan")
    rng = random.Random(seed)

    def resampled_mean(clusters):
        picks = [clusters[rng.randrange(len(clusters))] for _ in clusters]
        return sum(map(sum, picks)) / sum(map(len, picks))
    stats = sorted(mean([resampled_mean(g) for g in groups]) for _ in range(n_resamples))
    return stats[int(alpha / 2 * (n_resamples - 1))], stats[int((1 - alpha / 2) * (n_resamples - 1) + 0.5)]


def std(xs):
    """Sample standard deviation (n - 1); 0 for a single value."""
    if len(xs) < 2:
        return 0.0
    m = mean(xs)
    return (sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) ** 0.5


def summarise(values, requests, n_resamples, seed):
    """Mean of per-prompt values and its interval, resampling requests (the cluster of each value)."""
    lo, hi = bootstrap_ci([clusters_of(values, requests)], n_resamples, seed)
    return {"mean": mean(values), "lo": lo, "hi": hi, "n": len(values), "requests": len(set(requests))}


# ----------------------------------------------------------------------------------------------
# MAIN

def default_policies(run_dir):
    found = [d for d in sorted(Path(run_dir).iterdir()) if d.is_dir() and d.name.startswith(POLICY_PREFIXES)
             and (d / "config.json").exists() and (d / "stage.json").exists()]
    if not found:
        raise UserError(f"no policy directories in {run_dir}; run the earlier stages or name policies")
    return found


@torch.no_grad()
def sample_policy(policy, tok, prompt_ids, args, device, dtype):
    """Responses (token lists) for every prompt and sample, with a generator seeded the same way for
    every policy: the same settings and seeds across policies."""
    gen = torch.Generator(device=device).manual_seed(args.seed)
    work = [p for p in prompt_ids for _ in range(args.samples_per_prompt)]
    out = []
    for i in range(0, len(work), args.batch_size):
        ys, _ = sample_responses(policy, work[i:i + args.batch_size], tok.pad_token_id, tok.eos_token_id,
                                 args.max_new_tokens, device, dtype, gen)
        out += ys
    return work, out


@torch.no_grad()
def score_and_kl(rm, sft, policy, work, responses, pad_id, batch_size, device, dtype):
    """RM scores and per-sample KL estimates sum_t log pi - log sft, each a list."""
    scores, kls = [], []
    for i in range(0, len(work), batch_size):
        seqs = list(zip(work[i:i + batch_size], responses[i:i + batch_size]))
        ids, attn, resp = (t.to(device) for t in collate(seqs, pad_id))
        with torch.inference_mode(), autocast(device, dtype):
            scores += reward_scores(rm, ids, attn).tolist()
            if policy is sft:
                kls += [0.0] * len(seqs)
            else:
                kls += (token_logps(policy, ids, attn, resp) - token_logps(sft, ids, attn, resp)).sum(-1).tolist()
    return scores, kls


def per_prompt(values, k):
    """Average the k samples of each prompt: the bootstrap resamples prompts, not samples."""
    return [sum(values[i:i + k]) / k for i in range(0, len(values), k)]


def find_baseline(args, policies, rm_sft_dir):
    """The baseline of win rates and KL: --baseline, else the one policy whose stage.json says it is an SFT
    model (not whichever is listed first), else the SFT the reward model was trained from (its stage.json
    names it: the SFT model of this run, so the comparison is still with what it is)."""
    if args.baseline:
        return Path(args.baseline)
    sfts = list({p.resolve(): p for p in policies if stage_of(p).get("stage") == "01_sft"}.values())
    if len(sfts) > 1:
        raise UserError(f"several SFT policies ({', '.join(map(str, sfts))}); name the baseline with --baseline DIR")
    return sfts[0] if sfts else rm_sft_dir


def stage_of(pdir):
    path = Path(pdir) / "stage.json"
    return json.load(open(path)) if path.exists() else {}


def budget_of(pdir):
    """A policy's training budget in words, from its stage.json, so compared methods can be seen to have
    had the same (or not)."""
    st = stage_of(pdir)
    a, f = st.get("args", {}), st.get("final", {})
    if st.get("stage") == "01_sft":
        return f"{f.get('steps', '?')} SFT steps"
    if st.get("stage") == "04_dpo" and a.get("online"):
        return f"{f.get('steps')} steps x {a['batch_size'] * a['grad_accum']} prompts x 2 samples (online)"
    if st.get("stage") == "04_dpo" and "n_pairs" in f:
        return (f"{f['steps']} steps x {f['pairs_per_step']} pairs = {f['steps'] * f['pairs_per_step']} pairs, "
                f"{f['epochs_seen']:.2f} epochs of {f['n_pairs']} {st['data']['split']} pairs")
    if st.get("stage") == "05_ppo":  # PPO continues from another policy: its budget comes on top
        init, rollouts = Path(st.get("policy_init", "?")), a["steps"] * a["rollout_batch"]
        return (f"{a['steps']} iterations x {a['rollout_batch']} rollouts = {rollouts} rollouts, "
                f"{rollouts / max(1, st.get('n_prompts', 0)):.2f} epochs of {st.get('n_prompts')} {st.get('prompts')} "
                f"prompts; after {init.name} ({budget_of(init)})")
    return "?"


def request_of(row):
    """The cluster of a test row for the bootstrap: its request (built-in rows share one across
    wordings), else the prompt itself."""
    meta = row.get("meta")
    request = meta.get("request") if isinstance(meta, dict) else None
    return str(request) if request is not None else json.dumps(row["prompt"])


def main(args, state):
    if args.combine:
        return combine(args, state)
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer
    run_dir = Path(f"runs/{args.run}")
    rm_dir = Path(args.reward or run_dir / "02_reward")
    out = Path(args.out or run_dir / "06_eval")
    rm_stage = need_stage(rm_dir, "02_reward", "python 02_reward.py")
    check_model_dir(rm_dir, "reward", "--reward")
    sft_dir = inherited_dir(rm_stage["sft"], rm_dir)       # the test prompts and the tokenizer
    sft_stage = need_stage(sft_dir, "01_sft", "python 01_sft.py")
    inherit_lengths(args, sft_stage)
    policies = list({Path(p).resolve(): Path(p) for p in args.policies}.values()) or default_policies(run_dir)
    base_dir = find_baseline(args, policies, sft_dir)
    for p in [base_dir] + policies:
        check_model_dir(p, "causal", "--baseline" if p == base_dir and args.baseline else "policy")
    if base_dir.resolve() not in [p.resolve() for p in policies]:
        policies = [base_dir] + policies
    policies.sort(key=lambda p: p.resolve() != base_dir.resolve())                 # the baseline first
    device = pick_device(args.device)
    dtype, precision_reason = pick_precision(args.precision, device)
    if out.exists() and not args.overwrite:
        raise UserError(f"{out} exists; pass --overwrite to replace it")
    t_start = time.time()
    builtin = sft_stage["dataset"]["name"] == "builtin"
    if builtin:
        import builtin_task

    test_rows = read_jsonl(sft_dir / "data_test.jsonl")
    if args.max_prompts:
        test_rows = test_rows[:args.max_prompts]
    requests = [request_of(r) for r in test_rows]
    tok = AutoTokenizer.from_pretrained(sft_dir)
    prompt_ids = [encode(tok, r["prompt"], "", args.max_prompt_len, 2)[0] for r in test_rows]
    rm = fp32_no_dropout(AutoModelForSequenceClassification.from_pretrained(rm_dir)).to(device).eval()
    base = fp32_no_dropout(AutoModelForCausalLM.from_pretrained(base_dir)).to(device).eval()
    k = args.samples_per_prompt
    print(f"evaluating {len(policies)} policies on {len(test_rows)} test prompts ({len(set(requests))} requests) "
          f"x {k} samples (dataset {sft_stage['dataset']['name']!r}, RM {rm_dir}, baseline {base_dir})")

    # 1. sample and score every policy, the baseline first
    raw, samples = {}, []
    for pdir in tqdm(policies, desc="06_eval policies", dynamic_ncols=True):
        name = pdir.name if pdir.parent.resolve() == run_dir.resolve() else str(pdir)
        policy = base if pdir.resolve() == base_dir.resolve() else \
            fp32_no_dropout(AutoModelForCausalLM.from_pretrained(pdir)).to(device).eval()
        t0 = time.time()
        work, responses = sample_policy(policy, tok, prompt_ids, args, device, dtype)
        texts = [tok.decode(r, skip_special_tokens=True).strip() for r in responses]
        scores, kls = score_and_kl(rm, base, policy, work, responses, tok.pad_token_id, args.batch_size, device, dtype)
        rows = [r for r in test_rows for _ in range(k)]
        rec = {"dir": str(pdir), "budget": budget_of(pdir), "rm": scores, "kl": kls,
               "length": [len(r) for r in responses],
               "eos": [float(len(r) > 0 and r[-1] == tok.eos_token_id) for r in responses], "time_s": time.time() - t0}
        if builtin:
            rec["gold"] = [builtin_task.gold_score(r, t) for r, t in zip(rows, texts)]
            rec["refusal"] = [float(builtin_task.is_refusal(t)) for t in texts]
        raw[name] = rec
        samples += [{"policy": name, "prompt": r["prompt"][-1]["content"], "request": request_of(r), "response": t,
                     "rm": s, "kl": kl, **({"gold": g, "family": r["family"]} if builtin else {})}
                    for r, t, s, kl, g in zip(rows, texts, scores, kls, rec.get("gold", [None] * len(texts)))]
        if policy is not base:
            del policy

    # 2. statistics per policy, with bootstrap intervals over requests
    first = raw[next(iter(raw))]
    families = sorted({r["family"] for r in test_rows}) if builtin else []
    results = {}
    for name, rec in raw.items():
        res = {"dir": rec["dir"], "budget": rec["budget"], "time_s": rec["time_s"]}
        values = {key: rec[key] for key in ("rm", "kl", "length", "eos") + (("gold",) if builtin else ())}
        values["win_rm"] = win_rate(rec["rm"], first["rm"])
        if builtin:
            values["win_gold"] = win_rate(rec["gold"], first["gold"])
        for key, vals in values.items():
            res[key] = summarise(per_prompt(vals, k), requests, args.bootstrap, args.seed)
        gold, refusal = per_prompt(rec.get("gold", []), k), per_prompt(rec.get("refusal", []), k)
        for fam in families:
            idx = [i for i, r in enumerate(test_rows) if r["family"] == fam]
            res[f"gold_{fam}"] = summarise([gold[i] for i in idx], [requests[i] for i in idx], args.bootstrap, args.seed)
            if fam in ("harmful", "harmless"):
                res[f"refusal_{fam}"] = summarise([refusal[i] for i in idx], [requests[i] for i in idx],
                                                  args.bootstrap, args.seed)
        results[name] = res

    # 3. write report.md, results.json, samples.jsonl, and the plot
    state["tmp"] = tmp = prepare_output(out, args.overwrite)
    report = write_report(results, tmp, args, sft_stage, rm_dir, base_dir, len(test_rows), len(set(requests)), families)
    json.dump({"stage": "06_eval", "args": vars(args), "dataset": sft_stage["dataset"], "sft": str(sft_dir.resolve()),
               "baseline": str(base_dir.resolve()), "reward": str(rm_dir.resolve()), "n_prompts": len(test_rows),
               "n_requests": len(set(requests)), "results": results, "versions": versions(), "device": str(device),
               "precision": precision_name(dtype), "precision_reason": precision_reason,
               "wall_time_s": time.time() - t_start, "perf/peak_mem_mb": peak_memory_mb(device)},
              open(tmp / "results.json", "w"), indent=2)
    write_jsonl(tmp / "samples.jsonl", samples)
    commit_output(tmp, out)
    print("\n" + report)
    print(f"06_eval: {len(policies)} policies in {time.time() - t_start:.0f}s -> {out}")


def write_report(results, tmp, args, sft_stage, rm_dir, base_dir, n_prompts, n_requests, families):
    """report.md: the metrics table with each policy's budget, the gold score per family, the plot."""
    cell = lambda r: f"{r['mean']:.3f} [{r['lo']:.3f}, {r['hi']:.3f}]"
    cols = [(c, h) for c, h in METRICS if c in next(iter(results.values()))]
    lines = [f"# 06_eval: {n_prompts} test prompts ({n_requests} requests) x {args.samples_per_prompt} samples, "
             f"seed {args.seed}", "",
             f"Dataset `{sft_stage['dataset']['name']}`; RM `{rm_dir}`; baseline `{base_dir.name}`; sampling at "
             f"temperature 1, at most {args.max_new_tokens} new tokens; a response without EOS by then is scored "
             f"as it stands (the RM at its last token). [95% bootstrap interval over requests.]", "",
             "| policy | " + " | ".join(h for _, h in cols) + " | budget |", "|---" * (len(cols) + 2) + "|"]
    for name, res in results.items():
        cells = [cell(res[c]) if c != "length" else f"{res[c]['mean']:.1f}" for c, _ in cols]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {res['budget']} |")
    if families:
        lines += ["", "Gold score per prompt family:", "",
                  "| policy | " + " | ".join(families) + " |", "|---" * (len(families) + 1) + "|"]
        lines += [f"| {name} | " + " | ".join(cell(res[f"gold_{f}"]) for f in families) + " |"
                  for name, res in results.items()]
    lines += ["", draw_plot(results, tmp / "reward_vs_kl.png", "gold" if families else "rm")]
    report = "\n".join(lines) + "\n"
    (tmp / "report.md").write_text(report)
    return report


def draw_plot(results, path, metric):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "(No plot: matplotlib is not installed; `pip install matplotlib` and run again to draw " \
               "reward_vs_kl.png.)"
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, res in results.items():
        ax.errorbar(res["kl"]["mean"], res[metric]["mean"],
                    yerr=[[res[metric]["mean"] - res[metric]["lo"]], [res[metric]["hi"] - res[metric]["mean"]]],
                    fmt="o", capsize=3)
        ax.annotate(name, (res["kl"]["mean"], res[metric]["mean"]), fontsize=8, xytext=(4, 4),
                    textcoords="offset points")
    ax.set_xlabel("KL(pi || SFT), nats per response")
    ax.set_ylabel(f"mean {metric} score")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return f"![{metric} score against KL to SFT](reward_vs_kl.png)"


# ----------------------------------------------------------------------------------------------
# SEVERAL SEEDS (--combine)

# (policy, baseline, the paper's claim), compared wherever both policies are in every run
CLAIMS = [("05_ppo", "04_dpo_all", "MPO beats vanilla DPO"),
          ("05_ppo", "05_ppo_vanilla", "MPO beats vanilla PPO"),
          ("04_dpo", "04_dpo_all", "DPO on the easy set beats DPO on all pairs"),
          ("05_ppo", "05_ppo_sftref", "the DPO reference beats the SFT reference")]


def find_eval_dir(path):
    """A finished 06_eval directory: `path` itself or `path`/06_eval."""
    path = Path(path)
    for d in (path, path / "06_eval"):
        if (d / "results.json").exists() and (d / "samples.jsonl").exists():
            return d
    raise UserError(f"{path}: no finished 06_eval output (results.json and samples.jsonl) here or in "
                    f"{path}/06_eval; run 06_eval.py for that run first")


def paired_differences(rows_a, rows_b, metric, k, where):
    """Differences of `metric` between two policies' samples of the same prompts, per prompt and grouped
    by request (the clusters of the bootstrap): a list of lists."""
    if len(rows_a) != len(rows_b) or any(a["prompt"] != b["prompt"] for a, b in zip(rows_a, rows_b)):
        raise UserError(f"{where}: the two policies were not sampled on the same prompts")
    diffs = per_prompt([a[metric] - b[metric] for a, b in zip(rows_a, rows_b)], k)
    return clusters_of(diffs, [r.get("request", r["prompt"]) for r in rows_a[::k]])


def combine(args, state):
    if args.policies:
        raise UserError("--combine takes 06_eval or run directories; do not name policy directories with it")
    runs = []
    for d in args.combine:
        d = find_eval_dir(d)
        res = json.load(open(d / "results.json"))
        by_policy = {}
        for row in read_jsonl(d / "samples.jsonl"):
            by_policy.setdefault(row["policy"], []).append(row)
        runs.append({"dir": d, "seed": res["args"]["seed"], "k": res["args"]["samples_per_prompt"],
                     "n_prompts": res["n_prompts"], "dataset": res["dataset"]["name"],
                     "results": res["results"], "samples": by_policy})
    if len({r["dataset"] for r in runs}) > 1:
        raise UserError("--combine: the runs evaluated different datasets (" +
                        ", ".join(sorted({r["dataset"] for r in runs})) + ")")
    names = [n for n in runs[0]["results"] if all(n in r["results"] for r in runs)]
    if not names:
        raise UserError("--combine: no policy name is in every run's results.json")
    out = Path(args.out or "runs/combined")
    seeds = [r["seed"] for r in runs]
    if len(set(seeds)) < len(seeds):
        print(f"06_eval: note: the runs share seeds ({seeds}); their spread is not a spread over seeds")

    # 1. every metric of every policy: per-seed means, their mean and standard deviation
    metrics = [(m, h) for m, h in METRICS if all(m in r["results"][n] for r in runs for n in names)]
    families = [(m, m[5:]) for m in runs[0]["results"][names[0]]
                if m.startswith("gold_") and all(m in r["results"][n] for r in runs for n in names)]
    table = {}
    for name in names:
        table[name] = {}
        for m, _ in metrics + families:
            per_seed = [r["results"][name][m]["mean"] for r in runs]
            table[name][m] = {"per_seed": per_seed, "mean": mean(per_seed), "std": std(per_seed)}

    # 2. the paper's claims as paired differences on the same prompts, within each seed's run
    primary = "gold" if "gold" in dict(metrics) else "rm"
    claims = []
    for a, b, claim in CLAIMS:
        if a not in names or b not in names:
            continue
        for metric in dict.fromkeys([primary, "rm"]):
            groups = [paired_differences(r["samples"][a], r["samples"][b], metric, r["k"], r["dir"]) for r in runs]
            per_seed = [mean(sum(g, [])) for g in groups]
            lo, hi = bootstrap_ci(groups, args.bootstrap, args.seed)
            claims.append({"claim": claim, "policy": a, "baseline": b, "metric": metric, "per_seed": per_seed,
                           "mean": mean(per_seed), "std": std(per_seed), "lo": lo, "hi": hi,
                           "seeds_in_favour": sum(d > 0 for d in per_seed)})

    # 3. report.md and results.json
    state["tmp"] = tmp = prepare_output(out, args.overwrite)
    lines = [f"# 06_eval --combine: {len(runs)} runs, seeds {', '.join(map(str, seeds))}", "",
             "Runs: " + ", ".join(f"`{r['dir']}` ({r['n_prompts']} test prompts)" for r in runs) + ". "
             "Cells: mean over the runs ± standard deviation over the runs (of each run's mean over its "
             "test prompts).", "",
             "| policy | " + " | ".join(h for _, h in metrics) + " | budget (first run) |",
             "|---" * (len(metrics) + 2) + "|"]
    cell = lambda c, digits=3: f"{c['mean']:.{digits}f} ± {c['std']:.{digits}f}"
    for name in names:
        cells = [cell(table[name][m], 1 if m == "length" else 3) for m, _ in metrics]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {runs[0]['results'][name].get('budget', '?')} |")
    if families:
        lines += ["", "Gold score per prompt family:", "", "| policy | " + " | ".join(f for _, f in families) + " |",
                  "|---" * (len(families) + 1) + "|"]
        lines += [f"| {name} | " + " | ".join(cell(table[name][m]) for m, _ in families) + " |" for name in names]
    if claims:
        lines += ["", "## The paper's comparisons", "",
                  "Policy minus baseline on the same test prompts: the mean difference per run, its mean "
                  "over runs, and a 95% bootstrap interval that resamples requests within each run (prompt "
                  "noise only; the per-run values show the noise of training).", "",
                  "| claim | policy - baseline | metric | per run | mean | 95% interval | runs in favour |",
                  "|---|---|---|---|---|---|---|"]
        for c in claims:
            lines.append(f"| {c['claim']} | {c['policy']} - {c['baseline']} | {c['metric']} | "
                         + ", ".join(f"{d:+.3f}" for d in c["per_seed"])
                         + f" | {c['mean']:+.3f} | [{c['lo']:+.3f}, {c['hi']:+.3f}] | "
                           f"{c['seeds_in_favour']}/{len(runs)} |")
    report = "\n".join(lines) + "\n"
    (tmp / "report.md").write_text(report)
    json.dump({"stage": "06_eval --combine", "args": vars(args), "runs": [str(r["dir"]) for r in runs],
               "seeds": seeds, "policies": table, "claims": claims, "versions": versions()},
              open(tmp / "results.json", "w"), indent=2)
    commit_output(tmp, out)
    print("\n" + report)
    print(f"06_eval: combined {len(runs)} runs -> {out}")


if __name__ == "__main__":
    run_main(main)
