"""Log-probs, reward scores and the samplers on the tiny model: masking, padding, caching, agreement
with plain Hugging Face forward passes."""

import contextlib
import gc

import pytest
import torch
import torch.nn.functional as F

from conftest import load_script

sft = load_script("01_sft")
rwd = load_script("02_reward")
split = load_script("03_split")
dpo = load_script("04_dpo")
ppo = load_script("05_ppo")

CPU = torch.device("cpu")


def examples(tok):
    msgs = [[{"role": "user", "content": "What is 2 + 3?"}],
            [{"role": "user", "content": "Sort these numbers from smallest to largest: 5, 1, 9, 7."}],
            [{"role": "user", "content": "Is 7 a prime number?"}]]
    resps = ["2 + 3 = 5.", "1, 5, 7, 9", "Yes, it is. I checked it twice to make sure it holds."]
    return sft.encode_rows(tok, [{"prompt": m, "r": r} for m, r in zip(msgs, resps)], 256, 128, "t", ("r",))


def naive_logps(model, prompt, response):
    """Full-vocabulary logits of one unpadded sequence, the textbook way."""
    ids = torch.tensor([prompt + response], device=model.device)
    logits = model(input_ids=ids).logits.float()[0, :-1]
    lp = logits.log_softmax(-1).gather(-1, ids[0, 1:, None]).squeeze(-1)
    return lp[len(prompt) - 1:].cpu()                # the response tokens only


@torch.no_grad()
def test_token_logps_masks_prompt_and_pad_and_matches_naive(tiny):
    model, tok = tiny
    model.eval()
    ex = examples(tok)
    ids, attn, resp = sft.collate(ex, tok.pad_token_id)
    lp = sft.token_logps(model, ids, attn, resp)
    for i, (p, r) in enumerate(ex):
        got = lp[i][resp[i, 1:]]
        assert torch.allclose(got, naive_logps(model, p, r), atol=1e-5)
        assert torch.all(lp[i][~resp[i, 1:]] == 0)         # prompt and pad positions give nothing


@torch.no_grad()
def test_left_and_right_padding_give_the_same_logps_entropy_and_values(tiny, tiny_model_dir):
    model, tok = tiny
    model.eval()
    ex = examples(tok)
    right = [t for t in sft.collate(ex, tok.pad_token_id, "right")]
    left = [t for t in sft.collate(ex, tok.pad_token_id, "left")]
    lr, er = sft.token_logps(model, *right, with_entropy=True)
    ll, el = sft.token_logps(model, *left, with_entropy=True)
    for i in range(len(ex)):
        assert torch.allclose(lr[i][right[2][i, 1:]], ll[i][left[2][i, 1:]], atol=1e-5)
        assert torch.allclose(er[i][right[2][i, 1:]], el[i][left[2][i, 1:]], atol=1e-5)
    sums_r = dpo.sequence_logps(lr, right[2][:, 1:], False)
    sums_l = dpo.sequence_logps(ll, left[2][:, 1:], False)
    assert torch.allclose(sums_r, sums_l, atol=1e-4)
    # the entropy is that of the full next-token distribution
    p, r = ex[0]
    logits = model(input_ids=torch.tensor([p + r])).logits[0, len(p) - 1].float()
    ent = -(logits.softmax(-1) * logits.log_softmax(-1)).sum()
    assert torch.allclose(er[0][right[2][0, 1:]][0], ent, atol=1e-5)


def test_a_new_pad_token_never_shrinks_an_embedding_padded_past_the_tokenizer(tiny_model_dir):
    """02 adds a pad token where the tokenizer has none but EOS (and no unk): an embedding with rows past the
    tokenizer (Qwen2.5, Pythia) keeps them, since the policy may give those ids and 05 and 06 have the RM
    read them; one with no spare row gets one."""
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer
    for rows in (420, None):
        tok = AutoTokenizer.from_pretrained(tiny_model_dir)
        tok.unk_token = tok.eos_token          # no unk apart from EOS: a pad token is added
        config = AutoConfig.from_pretrained(tiny_model_dir, num_labels=1, vocab_size=rows or len(tok))
        rm = AutoModelForSequenceClassification.from_config(config)
        rwd.set_distinct_pad(tok, rm)
        assert tok.pad_token == "<|pad|>" and tok.pad_token_id == len(tok) - 1 != tok.eos_token_id
        assert rm.get_input_embeddings().num_embeddings == (rows or len(tok)) == rm.config.vocab_size
        assert rm.config.pad_token_id == tok.pad_token_id


@torch.no_grad()
def test_reward_score_read_at_last_real_token_and_equal_to_hf(tmp_path, tiny_model_dir):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    rm = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=1)
    rwd.set_distinct_pad(tok, rm)
    assert tok.pad_token_id != tok.eos_token_id
    rm.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    rm2 = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    tok2 = AutoTokenizer.from_pretrained(tmp_path)
    ex = examples(tok2)
    for side in ("right", "left"):
        ids, attn, _ = sft.collate(ex, tok2.pad_token_id, side)
        ours = rwd.reward_scores(rm2, ids, attn)
        for i, (p, r) in enumerate(ex):
            alone = rm2(input_ids=torch.tensor([p + r])).logits[0, 0]      # no padding at all
            assert torch.allclose(ours[i], alone, atol=1e-5)
        if side == "right":  # HF's own padded forward reads the last non-pad token: the same EOS
            assert torch.allclose(ours, rm2(input_ids=ids, attention_mask=attn).logits[:, 0], atol=1e-5)
    # and the score is the head applied to the hidden state of the EOS that closes the response
    p, r = ex[0]
    h = rm2.base_model(input_ids=torch.tensor([p + r])).last_hidden_state[0, -1]
    assert torch.allclose(rm2.score(h), ours[0:1], atol=1e-5)


def pairs_and_separate_batch(tok):
    """Three pairs whose prompts and responses differ in length, and their 2B prompt + response sequences
    as one right-padded batch (chosen rows first), as scoring them one by one would see them."""
    ex = examples(tok)
    pairs = [(p, r, ex[(i + 1) % 3][1]) for i, (p, r) in enumerate(ex)]
    ids, attn, resp = sft.collate([(p, c) for p, c, _ in pairs] + [(p, r) for p, _, r in pairs], tok.pad_token_id)
    return pairs, ids, attn, resp


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_packed_pair_rewards_equal_each_sequence_alone_in_value_and_gradient(tiny_model_dir, attention):
    """02 packs [prompt | chosen | rejected] into one row: scores and the Bradley-Terry gradient must equal
    those of the 2B separate prompt + response sequences (lengths differ, so padding is exercised)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    make = lambda: AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=1,
                                                                      attn_implementation=attention)
    torch.manual_seed(0)
    rm_packed = make()
    rm_alone = make()
    rm_alone.load_state_dict(rm_packed.state_dict())
    pairs, ids, attn, _ = pairs_and_separate_batch(tok)
    assert rwd.own_masks_exact(rm_packed)                                       # so pair_rewards packs
    chosen, rejected = rwd.pair_rewards(rm_packed, pairs, tok.pad_token_id, CPU)
    alone = rwd.reward_scores(rm_alone, ids, attn)                              # (2B,)
    assert torch.allclose(torch.cat([chosen, rejected]), alone, atol=1e-5)
    assert (chosen - rejected).abs().min() > 1e-3                               # distinct scores: a real check
    rwd.bradley_terry_loss(chosen, rejected, 0.01)[0].backward()
    rwd.bradley_terry_loss(alone[:3], alone[3:], 0.01)[0].backward()
    for (name, a), b in zip(rm_packed.named_parameters(), rm_alone.parameters()):
        assert torch.allclose(a.grad, b.grad, atol=1e-6, rtol=1e-4), name
    assert rwd.pair_tokens(pairs) == int(attn.sum())


@pytest.mark.parametrize("average", [False, True])
@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_packed_pair_logps_equal_each_sequence_alone_in_value_and_gradient(tiny_model_dir, attention, average):
    """04 packs [prompt | chosen | rejected] into one row, the first rejected token predicted from the prompt's
    last position: sequence log-probs (sums, or IPO's means) and the DPO gradient must equal those of the 2B
    separate prompt + response sequences."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    make = lambda: AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation=attention).eval()
    packed, alone = make(), make()
    pairs, ids, attn, resp = pairs_and_separate_batch(tok)
    assert dpo.own_masks_exact(packed)                                          # so pair_logps packs
    chosen, rejected, n_tokens = dpo.pair_logps(packed, pairs, tok.pad_token_id, CPU, None, average)
    separate = dpo.sequence_logps(sft.token_logps(alone, ids, attn, resp), resp[:, 1:], average)   # (2B,)
    assert torch.allclose(torch.cat([chosen, rejected]), separate, atol=1e-5)
    assert (chosen - rejected).abs().min() > 1e-3                               # distinct values: a real check
    assert n_tokens == int(attn.sum())                                          # tokens/s counts the 2B sequences
    reference = torch.tensor([[-5.0, -7.0], [-6.0, -4.0], [-9.0, -8.0]])         # (B, 2): any fixed values
    dpo.dpo_loss(chosen, rejected, reference[:, 0], reference[:, 1], 0.5)[0].mean().backward()
    dpo.dpo_loss(separate[:3], separate[3:], reference[:, 0], reference[:, 1], 0.5)[0].mean().backward()
    for (name, a), b in zip(packed.named_parameters(), alone.parameters()):
        assert torch.allclose(a.grad, b.grad, atol=1e-6, rtol=1e-4), name


def no_exact_packing_config(arch, tok, **kw):
    """A tiny config whose packed row a 4-D mask of our own would not make equal to its separate sequences:
    a sliding window or a local one (GPT-Neo's counts places in the row), ALiBi, or layers that run along
    the row outside attention (Mamba, Jamba's Mamba layers, LFM2's convolutions)."""
    from transformers import AutoConfig
    small = dict(vocab_size=len(tok), pad_token_id=tok.pad_token_id, **kw)
    llama_like = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2)
    return {"mistral-window-4": lambda: AutoConfig.for_model("mistral", sliding_window=4, **llama_like, **small),
            "bloom-alibi": lambda: AutoConfig.for_model("bloom", hidden_size=32, n_layer=2, n_head=4, **small),
            "gpt-neo-local-4": lambda: AutoConfig.for_model(
                "gpt_neo", hidden_size=32, num_layers=2, num_heads=4, attention_types=[[["global", "local"], 1]],
                window_size=4, **small),
            "jamba": lambda: AutoConfig.for_model(
                "jamba", attn_layer_period=2, attn_layer_offset=1, expert_layer_period=100, num_experts=1,
                mamba_d_state=4, mamba_expand=2, **llama_like, **small),
            "lfm2-conv": lambda: AutoConfig.for_model("lfm2", layer_types=["conv", "full_attention"], **llama_like,
                                                      **small),
            "mamba": lambda: AutoConfig.for_model("mamba", hidden_size=32, num_hidden_layers=2, state_size=4,
                                                  **small)}[arch]()


@pytest.mark.parametrize("arch", ["mistral-window-4", "bloom-alibi", "gpt-neo-local-4", "jamba", "lfm2-conv", "mamba"])
@torch.no_grad()
def test_pair_logps_use_separate_sequences_where_a_packed_mask_is_not_exact(tiny, arch):
    from transformers import AutoModelForCausalLM
    _, tok = tiny
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(no_exact_packing_config(arch, tok)).eval()
    assert not dpo.own_masks_exact(model)
    pairs, *_ = pairs_and_separate_batch(tok)
    chosen, rejected, _ = dpo.pair_logps(model, pairs, tok.pad_token_id, CPU, None, False)
    alone = [naive_logps(model, p, c).sum() for p, c, _ in pairs] + [naive_logps(model, p, r).sum() for p, _, r in pairs]
    assert torch.allclose(torch.cat([chosen, rejected]), torch.stack(alone), atol=1e-4)


@pytest.mark.parametrize("arch", ["mistral-window-4", "bloom-alibi", "gpt-neo-local-4"])
@torch.no_grad()
def test_pair_rewards_score_separate_sequences_where_a_packed_mask_is_not_exact(tiny, arch):
    """A sliding window (transformers applies none to a 4-D mask it is given) or ALiBi (biases from distances
    within the row) would make packed scores wrong: pair_rewards must then score the 2B sequences."""
    from transformers import AutoModelForSequenceClassification
    _, tok = tiny
    torch.manual_seed(0)
    rm = AutoModelForSequenceClassification.from_config(no_exact_packing_config(arch, tok, num_labels=1)).eval()
    assert not rwd.own_masks_exact(rm) and not sft.own_masks_exact(rm)
    pairs, ids, attn, _ = pairs_and_separate_batch(tok)
    chosen, rejected = rwd.pair_rewards(rm, pairs, tok.pad_token_id, CPU)
    hidden = [rm.base_model(input_ids=ids[i:i + 1, :int(attn[i].sum())]).last_hidden_state for i in range(len(ids))]
    alone = torch.stack([rm.score(h[0, -1])[0] for h in hidden])               # each sequence alone, unpadded
    assert torch.allclose(torch.cat([chosen, rejected]), alone, atol=1e-5)


@pytest.mark.parametrize("device", ["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
@pytest.mark.parametrize("arch, transform", [("granite", {"logits_scaling": 8.0}), ("cohere", {"logit_scale": 0.25}),
                                             ("gemma2", {"final_logit_softcapping": 0.5, "head_dim": 8})])
@torch.no_grad()
def test_log_probs_are_those_of_models_that_transform_their_logits(tiny, tmp_path, arch, transform, device):
    """Granite divides its logits after the LM head, Cohere multiplies them, Gemma-2 soft-caps them: the
    stages' log-probs (token_logps, pair_logps, the sampler) must be the model's own, and load_model's check
    must pass them."""
    from transformers import AutoConfig, AutoModelForCausalLM
    _, tok = tiny
    torch.manual_seed(0)
    cfg = AutoConfig.for_model(arch, vocab_size=len(tok), pad_token_id=tok.pad_token_id, hidden_size=32,
                               intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                               num_key_value_heads=2, **transform)
    dev = torch.device(device)
    model = AutoModelForCausalLM.from_config(cfg).to(dev).eval()
    pairs, *_ = pairs_and_separate_batch(tok)
    chosen, rejected, _ = dpo.pair_logps(model, pairs, tok.pad_token_id, dev, None, False)
    alone = [naive_logps(model, p, c).sum() for p, c, _ in pairs] + [naive_logps(model, p, r).sum() for p, _, r in pairs]
    assert torch.allclose(torch.cat([chosen, rejected]).cpu(), torch.stack(alone), atol=1e-4)
    gen = torch.Generator(device=dev).manual_seed(0)
    responses, logps = sft.sample_responses(model, [p for p, _, _ in pairs], tok.pad_token_id, tok.eos_token_id, 5,
                                            dev, None, gen)
    for (p, _, _), r, lp in zip(pairs, responses, logps):
        assert torch.allclose(torch.tensor(lp), naive_logps(model, p, r), atol=1e-4)
    model.save_pretrained(tmp_path)
    assert sft.load_model(str(tmp_path), "policy", "--model", dev) is not None


def test_a_model_whose_logits_the_stages_would_not_reproduce_is_refused(tiny, tmp_path):
    """A transform lm_logits applies but the model does not (or one the model applies that lm_logits does not
    know): load_model compares the two on a few tokens and refuses, in one line."""
    from transformers import AutoConfig, AutoModelForCausalLM
    _, tok = tiny
    cfg = AutoConfig.for_model("llama", vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                               num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
    cfg.final_logit_softcapping = 0.5   # Llama's forward ignores it
    AutoModelForCausalLM.from_config(cfg).save_pretrained(tmp_path)
    with pytest.raises(sft.UserError, match="changes its logits in a way these scripts do not reproduce"):
        sft.load_model(str(tmp_path), "policy", "--model", CPU)


def test_gpt2_is_a_policy_and_its_position_table_bounds_the_lengths(tiny, tmp_path):
    """GPT-2's class is GPT2LMHeadModel, not ...ForCausalLM: a causal LM all the same. Its learned position
    table has n_positions rows: longer limits are refused in one line, not an index error inside torch."""
    from transformers import GPT2Config, GPT2LMHeadModel
    _, tok = tiny
    GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=64, n_embd=32, n_layer=2, n_head=4)).save_pretrained(tmp_path)
    model = sft.load_model(str(tmp_path), "policy", "--model", CPU)
    sft.check_context(model, 64, "--model", "--max-prompt-len plus --max-response-len")
    with pytest.raises(sft.UserError, match="allow sequences of 65 tokens, but --model's model has 64 positions"):
        sft.check_context(model, 65, "--model", "--max-prompt-len plus --max-response-len")


@torch.no_grad()
def test_scalar_heads_score_in_fp32_under_bf16_autocast(tiny_model_dir, tiny):
    """The RM's and the value model's heads run in fp32 under autocast: bf16 rounding would quantise reward
    gaps (03), make different responses tie (06's win rates) and round PPO's values."""
    from transformers import AutoModelForSequenceClassification
    _, tok = tiny
    rm = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=1).eval()
    rm.score.weight.mul_(100.0)                                       # scores of some tens: bf16 steps of 1/8
    pairs, ids, attn, _ = pairs_and_separate_batch(tok)
    with sft.autocast(CPU, torch.bfloat16):
        hidden = sft.hidden_states(rm, ids, attn, use_cache=False)
        scores = rwd.reward_scores(rm, ids, attn)
        chosen, rejected = rwd.pair_rewards(rm, pairs, tok.pad_token_id, CPU)
        values = ppo.token_values(rm, ids, attn)
    last = attn.shape[1] - 1 - attn.flip(-1).argmax(-1)
    exact = rm.score(hidden.float()).squeeze(-1)                       # (B, T): the head in fp32
    assert torch.allclose(scores, exact[torch.arange(len(last)), last], rtol=1e-6, atol=1e-5)
    assert torch.allclose(values, exact[:, :-1], rtol=1e-6, atol=1e-5)
    assert not torch.equal(scores, scores.bfloat16().float())          # not rounded to bf16
    assert torch.allclose(torch.cat([chosen, rejected]), scores, atol=0.05)   # packed: the same up to bf16 noise


@torch.no_grad()
def test_pair_rewards_of_an_empty_response_fall_back_to_separate_sequences(tiny_model_dir):
    """A packed row reads each response's score at its EOS; a response without tokens has none (its score
    is the prompt's last token's), so such a batch is scored as separate sequences."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    rm = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=1).eval()
    p, c = examples(tok)[0]
    chosen, rejected = rwd.pair_rewards(rm, [(p, c, [])], tok.pad_token_id, CPU)
    alone = lambda ids: rm.score(rm.base_model(input_ids=torch.tensor([ids])).last_hidden_state[0, -1])  # last token
    assert torch.allclose(chosen, alone(p + c), atol=1e-5) and torch.allclose(rejected, alone(p), atol=1e-5)


@torch.no_grad()
def test_split_scores_pairs_in_the_order_of_the_rows(tiny_model_dir):
    # 03 batches pairs by length and packs each into one row: each gap must still belong to its own row
    # and equal that of the two sequences scored alone
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    rm = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=1).eval()
    rwd.set_distinct_pad(tok, rm)
    words = "one two three four five six seven eight nine ten".split()
    rows = [{"prompt": [{"role": "user", "content": " ".join(words[:n])}],
             "chosen": " ".join(words[:(3 * n) % 10 + 1]), "rejected": "no " * ((7 * n) % 5)}
            for n in (9, 1, 6, 3, 10, 2)]
    kw = dict(max_prompt_len=256, max_response_len=64, device=CPU, dtype=None, desc="t")
    gaps = split.score_pairs(rm, tok, rows, batch_size=4, **kw)
    for row, gap in zip(rows, gaps):
        p, yc, yr = sft.encode_rows(tok, [row], 256, 64, "t")[0]
        alone = rm(input_ids=torch.tensor([p + yc])).logits[0, 0] - rm(input_ids=torch.tensor([p + yr])).logits[0, 0]
        assert abs(gap - alone.item()) < 1e-4
    assert len(set(round(g, 4) for g in gaps)) == len(rows)   # distinct, so a mix-up would show
    # a pair repeated gets its first row's gap exactly (two places of a batch could differ in the last bits,
    # and 12 copies of one pair had been split 6 easy and 6 hard by --easy-fraction 0.5)
    real = split.pair_rewards   # each place of a batch a little apart, as kernels may make them
    jitter = lambda *a, **k: (lambda c, r: (c + 1e-6 * torch.arange(len(c)), r))(*real(*a, **k))
    try:
        split.pair_rewards = jitter
        again = split.score_pairs(rm, tok, rows + [rows[4], rows[1], rows[4]], batch_size=4, **kw)
    finally:
        split.pair_rewards = real
    assert again[6] == again[4] == again[8] and again[7] == again[1]
    assert again[:6] == pytest.approx(gaps, abs=1e-5)


@torch.no_grad()
def test_token_values_aligned_with_logps(tiny_model_dir):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    vm = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=1).eval()
    ex = examples(tok)
    r_ids, r_attn, r_resp = sft.collate(ex, tok.pad_token_id, "right")
    l_ids, l_attn, l_resp = sft.collate(ex, tok.pad_token_id, "left")
    vr, vl = ppo.token_values(vm, r_ids, r_attn), ppo.token_values(vm, l_ids, l_attn)
    for i in range(len(ex)):
        assert torch.allclose(vr[i][r_resp[i, 1:]], vl[i][l_resp[i, 1:]], atol=1e-5)


@pytest.mark.parametrize("dtype, checkpointing", [(None, False), (None, True), (torch.bfloat16, False)])
def test_ppo_first_update_on_step_2s_forward_pass_equals_one_on_its_own(tiny_model_dir, dtype, checkpointing):
    """With one minibatch, 05 keeps pi's and V's scoring pass (with its graph) as the first PPO update's forward
    pass. The update's statistics and the weights after it are those of a separate scoring pass under inference
    mode and an update that runs its own forward pass (the code before): to the bit in fp32; in bf16, where the
    two modes could round apart on another CPU, to bf16's precision. The first ratio is 1 exactly."""
    import argparse
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    ids, attn, resp = sft.collate(examples(tok), tok.pad_token_id)
    mask = resp[:, 1:]
    ref = dpo.load_model(str(tiny_model_dir), "policy", "--ref", CPU)
    rm = dpo.load_model(str(tiny_model_dir), "reward-init", "--reward", CPU)
    hp = argparse.Namespace(cliprange=0.2, cliprange_value=0.2, vf_coef=0.1, max_grad_norm=1.0)
    runs = []
    for keep_graph in (True, False):
        torch.manual_seed(0)
        policy = dpo.load_model(str(tiny_model_dir), "policy", "--policy", CPU).train()
        value = dpo.load_model(str(tiny_model_dir), "reward-init", "--value-init", CPU).train()
        if checkpointing:
            policy.gradient_checkpointing_enable()
            value.gradient_checkpointing_enable()
        with torch.no_grad():
            value.score.weight.normal_(0, 1)    # a value head that is not the RM's: V differs from r
        opts = [torch.optim.SGD(m.parameters(), lr=0.1) for m in (policy, value)]   # steps in proportion to grads
        old_logps, ref_logps, old_values, scores, first = ppo.score_rollouts(policy, ref, value, rm, ids, attn, resp,
                                                                            CPU, dtype, keep_graph)
        assert (first is not None) == keep_graph
        rewards, _ = ppo.compute_rewards(old_logps, ref_logps, mask, scores, 0.05)
        advantages, returns = ppo.gae(rewards, old_values, mask)
        batch = dict(ids=ids, attn=attn, resp=resp, mask=mask, old_logps=old_logps, old_values=old_values,
                     advantages=ppo.masked_whiten(advantages, mask), returns=returns)
        stats = ppo.ppo_update(policy, value, opts, torch.amp.GradScaler(enabled=False), batch, hp, CPU, dtype,
                               "test", forward=first)
        start = dpo.load_model(str(tiny_model_dir), "policy", "--policy", CPU)
        moved = [(p - p0).detach() for p, p0 in zip(policy.parameters(), start.parameters())]   # pi's step
        runs.append((old_logps, old_values, stats, moved, [p.detach().clone() for p in value.parameters()]))
    (lp_a, v_a, stats_a, moved_a, value_a), (lp_b, v_b, stats_b, moved_b, value_b) = runs
    assert stats_a["ratio"] == 1.0   # (the policy loss is then -mean(A), 0 for whitened A: its gradient is not)
    assert moved_a[0].abs().max() > 0                                      # the update moved the embedding
    if dtype is None:
        assert torch.equal(lp_a, lp_b) and torch.equal(v_a, v_b) and stats_a == stats_b
        assert all(torch.equal(a, b) for a, b in zip(moved_a + value_a, moved_b + value_b))
    else:
        assert torch.allclose(lp_a, lp_b, atol=0.05) and torch.allclose(v_a, v_b, atol=0.05)
        assert all(torch.allclose(a, b, rtol=0.05, atol=1e-4 * b.abs().max().item())
                   for a, b in zip(moved_a, moved_b))


@torch.no_grad()
def test_sampled_logps_equal_a_fresh_forward_pass(tiny):
    model, tok = tiny
    model.eval()
    prompts = [p for p, _ in examples(tok)]
    g = torch.Generator().manual_seed(0)
    ys, lps = dpo.sample_responses(model, prompts, tok.pad_token_id, tok.eos_token_id, 12, CPU, None, g)
    ids, attn, resp = sft.collate(list(zip(prompts, ys)), tok.pad_token_id)
    fresh = sft.token_logps(model, ids, attn, resp)
    for i, y in enumerate(ys):
        assert 1 <= len(y) <= 12
        assert torch.allclose(fresh[i][resp[i, 1:]], torch.tensor(lps[i]), atol=1e-4)
    # PPO's first ratio is exactly one: the training pass repeats the rollout pass
    again = sft.token_logps(model, ids, attn, resp)
    assert torch.equal(fresh, again)


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [None, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("mixture", [False, True], ids=["policy", "mixture"])
@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@torch.no_grad()
def test_static_cache_sampler_logps_equal_a_fresh_forward_pass(tiny, tiny_model_dir, device, dtype, mixture,
                                                               attention):
    """The static-cache decoder (on CUDA: the step replayed as a CUDA graph) samples from the same
    distributions as a fresh forward pass over prompt + response, also from the policy-reference mixture;
    prompts of different lengths, so left padding and each row's own positions are exercised."""
    from transformers import AutoModelForCausalLM
    dev = torch.device(device)
    load = lambda: AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation=attention)
    policy, ref = load().to(dev).eval(), load().to(dev).eval()   # eager: our mask must be additive there
    for p in ref.parameters():
        p.add_(0.05 * torch.randn_like(p))
    _, tok = tiny
    prompts = [p for p, _ in examples(tok)]
    assert len({len(p) for p in prompts}) > 1
    mix = (lambda a, b: dpo.mixture_logps(a, b, 0.5)) if mixture else None
    g = torch.Generator(device=dev).manual_seed(3)
    ys, lps = dpo.sample_responses(policy, prompts, tok.pad_token_id, tok.eos_token_id, 12, dev, dtype, g,
                                   ref=ref if mixture else None, mix=mix, static=True)
    ids, attn, resp = (t.to(dev) for t in sft.collate(list(zip(prompts, ys)), tok.pad_token_id))
    with sft.autocast(dev, dtype):   # bf16: the training pass's autocast, as 05 recomputes them
        fresh = sft.token_logps(policy, ids, attn, resp)
    if mixture:   # log of the normalised geometric mean, token by token, from each model's full distribution
        out = lambda m: m(input_ids=ids, attention_mask=attn,
                          position_ids=sft.position_ids_from(attn)).logits[:, :-1].float().log_softmax(-1)
        with sft.autocast(dev, dtype):
            lp = dpo.mixture_logps(out(policy), out(ref), 0.5)
        fresh = torch.where(resp[:, 1:], lp.gather(-1, ids[:, 1:, None]).squeeze(-1), 0.0)
    # no cache outlives the call (a reference cycle would keep each call's KV cache until a collection)
    assert not [o for o in gc.get_objects() if type(o).__name__ == "OneDtypeCache"]
    assert sum(map(len, ys)) > 2 * len(ys)
    tol = 1e-4 if dtype is None else 2e-2   # bf16: attention kernels of other shapes round differently
    for i, y in enumerate(ys):
        assert 1 <= len(y) <= 12
        assert torch.allclose(fresh[i][resp[i, 1:]].cpu(), torch.tensor(lps[i]), atol=tol), (device, i)


def WeightCasts(weights):
    """A dispatch mode counting (in .n) the casts (aten._to_copy) of tensors whose storage is in `weights`."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func is torch.ops.aten._to_copy.default and args[0].data_ptr() in weights:
                self.n += 1
            return func(*args, **(kwargs or {}))
    return Count()


@torch.no_grad()
def test_the_plain_cache_sampler_casts_each_weight_to_bf16_once_a_call_and_samples_the_same(tiny):
    """Under bf16 autocast the rollout runs in one autocast context, whose cache keeps each weight's bf16
    copy until the call ends: the casts of weights do not grow with the tokens sampled, and the samples
    are those of casting at every step."""
    model, tok = tiny
    model.eval()
    weights = {p.data_ptr() for p in model.parameters() if p.dim() == 2}   # (the tied LM head is the embedding)
    prompts = [p for p, _ in examples(tok)]

    def sample(tokens, cache=True):   # cache=False: an outer context without a cache, which ours inherit
        g = torch.Generator().manual_seed(7)
        outer = contextlib.nullcontext() if cache else torch.autocast("cpu", torch.bfloat16, cache_enabled=False)
        with outer, WeightCasts(weights) as casts:
            out = dpo.sample_responses(model, prompts, tok.pad_token_id, -1, tokens, CPU, torch.bfloat16, g)
        return out, casts.n
    (_, n_short), (long, n_long) = sample(2), sample(10)
    assert [len(y) for y in long[0]] == [10] * len(prompts)      # no EOS: every step ran
    assert n_short == n_long == len(weights)                     # once a call, not once a token
    uncached, n_uncached = sample(10, cache=False)
    assert n_uncached == 10 * len(weights)
    assert uncached == long


@torch.no_grad()
def test_a_frozen_reference_is_cast_once_a_call_and_frozen_again_after_the_rollout(tiny, tiny_model_dir):
    """04's reference has requires_grad off, and autocast caches no cast of such a weight: the mixture
    sampler marks it for the rollout only. Its weights are cast once a call, the samples are those of a
    reference that requires grad, and it is frozen again afterwards, also when the rollout fails."""
    from transformers import AutoModelForCausalLM
    policy, tok = tiny
    ref = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.mul_(1.5)   # another model than the policy
    weights = {p.data_ptr() for p in ref.parameters() if p.dim() == 2}
    prompts = [p for p, _ in examples(tok)]

    def sample(mix=lambda pi, r: dpo.mixture_logps(pi, r, 0.5)):
        with WeightCasts(weights) as casts:
            out = dpo.sample_responses(policy, prompts, tok.pad_token_id, -1, 10, CPU, torch.bfloat16,
                                       torch.Generator().manual_seed(3), ref, mix)
        return out, casts.n
    unfrozen, _ = sample()
    ref.requires_grad_(False)
    frozen, n = sample()
    assert n == len(weights) and frozen == unfrozen and len(frozen[0][0]) == 10
    assert not any(p.requires_grad for p in ref.parameters())

    def failing_mix(pi, r):
        assert all(p.requires_grad for p in ref.parameters())   # marked while it samples
        raise KeyboardInterrupt
    ref.train()
    with pytest.raises(KeyboardInterrupt):
        sample(failing_mix)
    assert not any(p.requires_grad for p in ref.parameters()) and ref.training   # its own mode back
    ref.eval()


@torch.no_grad()
def test_sampling_is_deterministic_for_a_seed(tiny):
    model, tok = tiny
    prompts = [p for p, _ in examples(tok)]
    runs = [dpo.sample_responses(model, prompts, tok.pad_token_id, tok.eos_token_id, 8, CPU, None,
                                 torch.Generator().manual_seed(5))[0] for _ in range(2)]
    assert runs[0] == runs[1]


@torch.no_grad()
def test_a_finished_rows_non_finite_logits_do_not_stop_the_rollout(tiny, monkeypatch):
    """After a row's EOS its draws are discarded: NaN logits there (padding fed to a model in fp16) must not
    stop the rollout, while the same NaN in a row still sampling does (sample_tokens' error)."""
    model, tok = tiny
    prompts = [p for p, _ in examples(tok)]
    sample = lambda eos: dpo.sample_responses(model, prompts, tok.pad_token_id, eos, 10, CPU, None,
                                              torch.Generator().manual_seed(3))
    eos = sample(-1)[0][0][1]                        # row 0's second token, made the EOS: row 0 stops early
    ys, lps = sample(eos)
    n = len(ys[0])
    assert ys[0][-1] == eos and any(len(y) > n for y in ys)   # row 0 finished while another row went on
    calls, lm_logits = [0], dpo.lm_logits

    def nan_row_0_from(first_call):
        def patched(model, hidden):
            logits = lm_logits(model, hidden)
            calls[0] += 1
            if calls[0] > first_call:          # call k (from 1) gives the distribution of token k - 1
                logits[0] = float("nan")
            return logits
        return patched
    monkeypatch.setattr(dpo, "lm_logits", nan_row_0_from(n))   # NaN only once row 0 has drawn its EOS
    assert sample(eos) == (ys, lps)
    calls[0] = 0
    monkeypatch.setattr(dpo, "lm_logits", nan_row_0_from(n - 1))   # NaN for row 0's last real draw
    with pytest.raises(dpo.UserError, match="next-token probabilities are NaN"):
        sample(eos)


@torch.no_grad()
def test_mixture_sampler_endpoints_reproduce_policy_and_reference(tiny, tiny_model_dir):
    """With B = 0 the sampler's distribution is the policy's, with B = 1 the reference's: checked on
    the log-probs of the sampled tokens (which the sampler reports), against each model's own."""
    from transformers import AutoModelForCausalLM
    policy, tok = tiny
    policy.eval()
    ref = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.05 * torch.randn_like(p))      # a reference that differs from the policy
    prompts = [p for p, _ in examples(tok)]
    for beta, target, other in ((0.0, policy, ref), (1.0, ref, policy)):
        g = torch.Generator().manual_seed(1)
        ys, lps = dpo.sample_responses(policy, prompts, tok.pad_token_id, tok.eos_token_id, 10, CPU, None, g,
                                       ref=ref, mix=lambda p, r: dpo.mixture_logps(p, r, beta))
        ids, attn, resp = sft.collate(list(zip(prompts, ys)), tok.pad_token_id)
        want = sft.token_logps(target, ids, attn, resp)
        not_want = sft.token_logps(other, ids, attn, resp)
        for i in range(len(ys)):
            got = torch.tensor(lps[i])
            assert torch.allclose(got, want[i][resp[i, 1:]], atol=1e-4)
            assert not torch.allclose(got, not_want[i][resp[i, 1:]], atol=1e-4)
    # B = 0.5: the sampled tokens' log-probs are those of the normalised geometric mean
    g = torch.Generator().manual_seed(2)
    ys, lps = dpo.sample_responses(policy, prompts[:1], tok.pad_token_id, tok.eos_token_id, 1, CPU, None, g,
                                   ref=ref, mix=lambda p, r: dpo.mixture_logps(p, r, 0.5))
    ids = torch.tensor([prompts[0]])
    lp_pi = policy(input_ids=ids).logits[0, -1].log_softmax(-1)
    lp_ref = ref(input_ids=ids).logits[0, -1].log_softmax(-1)
    mix = dpo.mixture_logps(lp_pi[None], lp_ref[None], 0.5)[0]
    assert abs(mix[ys[0][0]].item() - lps[0][0]) < 1e-4


@torch.no_grad()
def test_kl_of_identical_policies_is_zero(tiny):
    model, tok = tiny
    prompts = [p for p, _ in examples(tok)]
    ys, _ = dpo.sample_responses(model, prompts, tok.pad_token_id, tok.eos_token_id, 10, CPU, None,
                                 torch.Generator().manual_seed(0))
    ids, attn, resp = sft.collate(list(zip(prompts, ys)), tok.pad_token_id)
    kl = (sft.token_logps(model, ids, attn, resp) - sft.token_logps(model, ids, attn, resp)).sum(-1)
    assert torch.all(kl.abs() < 1e-6)


def test_collate_masks():
    ids, attn, resp = sft.collate([([1, 2], [3]), ([4], [5, 6, 7])], pad_id=0, side="left")
    assert ids.tolist() == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert attn.tolist() == [[0, 1, 1, 1], [1, 1, 1, 1]]
    assert resp.tolist() == [[False, False, False, True], [False, True, True, True]]
    assert sft.position_ids_from(attn).tolist() == [[0, 0, 1, 2], [0, 1, 2, 3]]


def test_encode_truncates_prompt_from_the_left_and_ends_with_eos(tiny, capsys):
    _, tok = tiny
    msgs = [{"role": "user", "content": "word " * 200}]
    rows = [{"prompt": msgs, "chosen": "fine answer " * 100, "rejected": "no"},
            {"prompt": [{"role": "user", "content": "hi"}], "chosen": "a", "rejected": "b"}]
    (p, c, r), (short_p, _, _) = sft.encode_rows(tok, rows, 16, 8, "rows.jsonl")
    full = tok(sft.render_prompt(tok, msgs), add_special_tokens=False)["input_ids"]
    assert p == full[-16:]                         # the end of the prompt (the assistant header) survives
    assert len(c) == 8 and c[-1] == tok.eos_token_id and r == sft.response_ids(tok, "no") + [tok.eos_token_id]
    assert "rows.jsonl: 1 of 2 prompts longer than 16 tokens, cut from the left" in capsys.readouterr().out
    assert sft.encode_rows(tok, rows[1:], 16, 8, "t", responses=()) == [(short_p,)]   # prompts alone
    notes = []   # 06's: the prompts cut go to report.md too (they were printed only)
    assert sft.encode_rows(tok, rows, 16, 8, "t", responses=(), notes=notes) == [(p,), (short_p,)]
    assert notes == ["t: 1 of 2 prompts longer than 16 tokens, cut from the left (--max-prompt-len)"]


def test_sample_tokens_draws_from_the_distribution_and_never_a_zero_probability_token(monkeypatch):
    probs = torch.tensor([[0.0, 0.5, 0.0, 0.3, 0.2, 0.0], [0.9, 0.0, 0.1, 0.0, 0.0, 0.0],
                          [0.25, 0.25, 0.0, 0.0, 0.0, 0.5]], dtype=torch.float64)
    logp = probs.log().float()
    logp[2] += 3                                                    # unnormalised: e^3 x probs, drawn the same
    draws = dpo.sample_tokens(logp.repeat(20_000, 1), torch.Generator().manual_seed(0)).view(20_000, 3)
    for row in range(3):
        freq = torch.bincount(draws[:, row], minlength=6).double() / 20_000
        assert freq[probs[row] == 0].sum() == 0                      # never a token of probability zero
        assert torch.allclose(freq, probs[row], atol=0.015)          # ~4 standard errors at p = 0.5
    # the ends of u's range: 0 draws the first token with p > 0; the total itself (past u's range: the
    # guard) the last, never the zero-probability tail or an index past the vocabulary
    for u, expected in ((0.0, [1, 0]), (1.0, [4, 2])):
        monkeypatch.setattr(torch, "rand", lambda n, *a, u=u, **kw: torch.full((n, 1), u, dtype=torch.float64))
        assert dpo.sample_tokens(probs[:2].log().float(), None).tolist() == expected
    # a row that is NaN, +inf or all -inf (a diverged model) is refused with a clear message, not sampled
    for bad in (float("nan"), float("inf"), -float("inf")):
        rows = probs.log().float()
        rows[1, :3] = bad                                           # with -inf: all of row 1 is -inf
        with pytest.raises(dpo.UserError, match="next-token probabilities are NaN, infinite or all zero"):
            dpo.sample_tokens(rows, None)
