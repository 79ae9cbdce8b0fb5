"""Every hand-written loss and estimator against numbers computed by hand (or by a plain loop)."""

import math

import pytest
import torch

from conftest import load_script

sft = load_script("01_sft")
rwd = load_script("02_reward")
split = load_script("03_split")
dpo = load_script("04_dpo")
ppo = load_script("05_ppo")
ev = load_script("06_eval")


def sig(x):
    return 1 / (1 + math.exp(-x))


def test_sft_loss_is_mean_nll_over_response_tokens_of_the_step():
    logps = torch.tensor([[-1.0, -2.0, -3.0], [-4.0, -5.0, -6.0]])
    mask = torch.tensor([[False, True, True], [True, False, False]])
    # tokens -2, -3, -4 count; the step has 6 response tokens in all (another micro-batch has 3)
    assert sft.sft_loss(logps, mask, 3).item() == pytest.approx(9 / 3)
    assert sft.sft_loss(logps, mask, 6).item() == pytest.approx(9 / 6)


def test_bradley_terry_loss():
    rw, rl = torch.tensor([2.0, 0.0]), torch.tensor([1.0, 0.5])
    loss, acc, margin = rwd.bradley_terry_loss(rw, rl)
    expect = (-math.log(sig(1.0)) - math.log(sig(-0.5))) / 2
    assert loss.item() == pytest.approx(expect, rel=1e-6)
    assert acc.item() == 0.5 and margin.item() == pytest.approx(0.25)
    loss_c, _, _ = rwd.bradley_terry_loss(rw, rl, center_coef=0.1)
    assert loss_c.item() == pytest.approx(expect + 0.1 * (3.0 ** 2 + 0.5 ** 2) / 2, rel=1e-6)


def test_dpo_loss_equal_policy_and_reference_is_log2():
    x = torch.tensor([-12.0, -30.0])
    losses, cr, rr = dpo.dpo_loss(x, x - 3, x, x - 3, beta=0.1)
    assert torch.allclose(losses, torch.full((2,), math.log(2)))
    assert torch.all(cr == 0) and torch.all(rr == 0)


def test_dpo_and_conservative_dpo_by_hand():
    pc, pr, rc, rr = (torch.tensor([v]) for v in (-10.0, -14.0, -11.0, -12.0))
    h = (-10 + 11) - (-14 + 12)  # = 3
    losses, c_rew, r_rew = dpo.dpo_loss(pc, pr, rc, rr, beta=0.5)
    assert losses.item() == pytest.approx(-math.log(sig(0.5 * h)), rel=1e-6)
    assert c_rew.item() == pytest.approx(0.5) and r_rew.item() == pytest.approx(-1.0)
    losses, _, _ = dpo.dpo_loss(pc, pr, rc, rr, beta=0.5, label_smoothing=0.2)
    expect = -0.8 * math.log(sig(1.5)) - 0.2 * math.log(sig(-1.5))
    assert losses.item() == pytest.approx(expect, rel=1e-6)
    assert not c_rew.requires_grad


def test_ipo_loss_by_hand():
    pc, pr, rc, rr = (torch.tensor([v]) for v in (-1.0, -1.5, -1.2, -1.3))
    h = (-1.0 + 1.2) - (-1.5 + 1.3)  # = 0.4
    losses, _, _ = dpo.ipo_loss(pc, pr, rc, rr, tau=0.5)
    assert losses.item() == pytest.approx((h - 1.0) ** 2, rel=1e-5)
    losses, _, _ = dpo.ipo_loss(pc, pr, rc, rr, tau=1.25)  # target 0.4: zero loss
    assert losses.item() == pytest.approx(0.0, abs=1e-10)


def test_sequence_logps_sum_for_dpo_mean_for_ipo():
    tl = torch.tensor([[0.0, -1.0, -2.0, 0.0], [-1.0, -1.0, -4.0, -3.0]])
    mask = torch.tensor([[False, True, True, False], [False, False, True, True]])
    assert dpo.sequence_logps(tl, mask, average=False).tolist() == [-3.0, -7.0]
    assert dpo.sequence_logps(tl, mask, average=True).tolist() == [-1.5, -3.5]


def test_mixture_logps_endpoints_and_midpoint():
    p = torch.log_softmax(torch.tensor([[1.0, 2.0, 0.5]]), -1)
    r = torch.log_softmax(torch.tensor([[0.0, -1.0, 3.0]]), -1)
    assert torch.allclose(dpo.mixture_logps(p, r, 0.0), p, atol=1e-6)
    assert torch.allclose(dpo.mixture_logps(p, r, 1.0), r, atol=1e-6)
    mid = torch.sqrt(p.exp() * r.exp())
    assert torch.allclose(dpo.mixture_logps(p, r, 0.5).exp(), mid / mid.sum(), atol=1e-6)


def test_online_preference_keeps_the_bradley_terry_probability():
    a, b = torch.tensor([1.0, 0.0, 2.0]), torch.tensor([0.5, 0.0, 3.0])
    assert dpo.online_preference(a, b, "argmax", None).tolist() == [1.0, 0.5, 0.0]
    assert torch.allclose(dpo.online_preference(a, b, "soft", None), torch.tensor([sig(0.5), 0.5, sig(-1.0)]))
    g = torch.Generator().manual_seed(0)
    big = dpo.online_preference(torch.full((4000,), 1.0), torch.zeros(4000), "sample", g)
    assert set(big.tolist()) == {0.0, 1.0} and abs(big.mean().item() - sig(1.0)) < 0.03


def test_soft_preference_is_the_expected_loss_of_a_sampled_label():
    """IPO with p: (h - (p - 1/2)/tau)^2, minimised at h = (p - 1/2)/tau (not 1/(2 tau) as with argmax
    labels); its gradient in h equals the expected gradient over a label ~ Bernoulli(p). DPO with p is
    label smoothing eps = 1 - p, the expected loss over that label."""
    pc, pr, rc, rr = torch.tensor([-3.0, -2.0]), torch.tensor([-4.0, -1.0]), torch.tensor([-3.5, -2.5]), torch.tensor([-3.0, -1.5])
    h = (pc - rc) - (pr - rr)                                              # [0.5, 0.0]
    p, tau = torch.tensor([0.8, 0.6]), 0.5
    soft, _, _ = dpo.ipo_loss(pc, pr, rc, rr, tau, p)
    assert torch.allclose(soft, (h - (p - 0.5) / tau) ** 2)                 # targets 0.6 and 0.2
    hard, _, _ = dpo.ipo_loss(pc, pr, rc, rr, tau, torch.ones(2))
    assert torch.allclose(hard, dpo.ipo_loss(pc, pr, rc, rr, tau)[0])     # p = 1 is the offline loss
    # d/dh of the soft loss = E over I ~ Bernoulli(p) of d/dh (h - (I - 1/2)/tau)^2
    assert torch.allclose(2 * (h - (p - 0.5) / tau), p * 2 * (h - 0.5 / tau) + (1 - p) * 2 * (h + 0.5 / tau))
    beta = 0.5
    soft, _, _ = dpo.dpo_loss(pc, pr, rc, rr, beta, 1 - p)
    expected = p * -torch.log(torch.sigmoid(beta * h)) + (1 - p) * -torch.log(torch.sigmoid(-beta * h))
    assert torch.allclose(soft, expected)
    ipo = dpo.preference_loss(pc, pr, rc, rr, "ipo", beta=beta, tau=tau, preference=p)[0]
    assert torch.allclose(ipo, (h - (p - 0.5) / tau) ** 2)
    assert torch.allclose(dpo.preference_loss(pc, pr, rc, rr, "dpo", beta=beta, tau=tau, preference=p)[0], expected)


# ---------------------------------------------------------------------------- PPO

def test_nash_md_pg_loss_by_hand():
    # one response of two tokens (a third position is padding), P(y > y') = 0.8, tau = 0.1
    policy = torch.tensor([[-1.0, -2.0, 0.0]], requires_grad=True)
    reference = torch.tensor([[-1.5, -1.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    losses, log_ratios = dpo.nash_md_pg_loss(policy, reference, mask, torch.tensor([0.8]), 0.1)
    # log ratios 0.5, -1; KL to go -0.5, -1; advantages 0.3 + 0.05 = 0.35 and 0.3 + 0.1 = 0.4
    assert losses.item() == pytest.approx(-(-1.0 * 0.35 - 2.0 * 0.4))
    assert log_ratios.item() == pytest.approx(-0.5)
    losses.sum().backward()   # the advantages are constants: d loss / d log pi(y_t) = -A_t
    assert policy.grad[0].tolist() == pytest.approx([-0.35, -0.4, 0.0])


def tabular_nash_setup(seed=0, k=4, beta=0.25, tau=0.3):
    """A one-token game: policy softmax(theta), reference mu, the Bradley-Terry preference of rewards r,
    and the opponent pi_mix ∝ pi^(1-beta) mu^beta, held fixed (stop-gradient)."""
    g = torch.Generator().manual_seed(seed)
    theta = torch.randn(k, generator=g, dtype=torch.float64, requires_grad=True)
    log_mu = torch.randn(k, generator=g, dtype=torch.float64).log_softmax(-1)
    r = torch.randn(k, generator=g, dtype=torch.float64)
    pref = torch.sigmoid(r[:, None] - r[None, :])                       # P[y, y'] = P(y > y')
    log_pi = theta.log_softmax(-1)
    pi_mix = ((1 - beta) * log_pi + beta * log_mu).softmax(-1).detach()
    return theta, log_pi, log_mu, pref, pi_mix, tau


def test_nash_md_pg_expected_gradient_has_the_closed_form():
    # E_{y ~ pi, y' ~ pi_mix}[grad L] = -pi * (A - <pi, A>),  A_y = (P pi_mix)_y - 1/2 - tau log(pi_y / mu_y),
    # = -grad [pi' P pi_mix - tau KL(pi || mu)] (Munos et al., 2023, section 7)
    theta, log_pi, log_mu, pref, pi_mix, tau = tabular_nash_setup()
    p_vs_mix = pref @ pi_mix                                             # (K,) P(y > pi_mix), linear in the label
    losses, _ = dpo.nash_md_pg_loss(log_pi[:, None], log_mu[:, None], torch.ones(4, 1, dtype=torch.float64),
                                    p_vs_mix, tau)
    expected_loss = (log_pi.exp().detach() * losses).sum()               # every y weighted by pi(y)
    grad, = torch.autograd.grad(expected_loss, theta, retain_graph=True)
    pi = log_pi.exp().detach()
    a = p_vs_mix - 0.5 - tau * (log_pi.detach() - log_mu)
    assert grad.tolist() == pytest.approx((-pi * (a - (pi * a).sum())).tolist(), abs=1e-12)
    objective = log_pi.exp() @ pref @ pi_mix - tau * (log_pi.exp() * (log_pi - log_mu)).sum()
    assert grad.tolist() == pytest.approx((-torch.autograd.grad(objective, theta)[0]).tolist(), abs=1e-12)


def test_nash_md_pg_kl_to_go_is_the_exact_kl_gradient_over_sequences():
    # two-token responses from a tabular autoregressive policy: the per-token penalties summed over the tokens
    # to come give, in expectation over all 9 sequences, exactly grad [E q(y) - 1/2 - tau KL(pi || mu)]
    g = torch.Generator().manual_seed(1)
    t1 = torch.randn(3, generator=g, dtype=torch.float64, requires_grad=True)       # first token
    t2 = torch.randn(3, 3, generator=g, dtype=torch.float64, requires_grad=True)    # second, given the first
    m1, m2 = torch.randn(3, generator=g, dtype=torch.float64), torch.randn(3, 3, generator=g, dtype=torch.float64)
    q = torch.rand(9, generator=g, dtype=torch.float64)                 # P(y > y') of each sequence
    seqs = [(a, b) for a in range(3) for b in range(3)]
    tok = lambda l1, l2: torch.stack([torch.stack([l1.log_softmax(-1)[a], l2[a].log_softmax(-1)[b]]) for a, b in seqs])
    policy, reference = tok(t1, t2), tok(m1, m2)                         # (9, 2) token log-probs
    losses, _ = dpo.nash_md_pg_loss(policy, reference, torch.ones(9, 2, dtype=torch.float64), q, 0.2)
    seq_pi = policy.sum(-1)
    grads = torch.autograd.grad((seq_pi.exp().detach() * losses).sum(), (t1, t2), retain_graph=True)
    objective = (seq_pi.exp() * (q - 0.5)).sum() - 0.2 * (seq_pi.exp() * (seq_pi - reference.sum(-1))).sum()
    for got, want in zip(grads, torch.autograd.grad(objective, (t1, t2))):
        assert got.flatten().tolist() == pytest.approx((-want).flatten().tolist(), abs=1e-12)


def test_online_ipo_expected_gradient_is_self_play_nash_md_pg():
    # Calandriello et al. (2024), section 4: with both samples from pi (beta = 0) and the soft preference, the
    # expected gradient of IPO's loss (summed log-probs) is a positive multiple, 4 / tau, of Nash-MD-PG's
    theta, log_pi, log_mu, pref, pi_mix, tau = tabular_nash_setup(beta=0.0)
    pi = log_pi.exp().detach()
    ys, opp = torch.arange(4).repeat_interleave(4), torch.arange(4).repeat(4)    # every (y, y') pair
    ipo, _, _ = dpo.ipo_loss(log_pi[ys], log_pi[opp], log_mu[ys], log_mu[opp], tau, pref[ys, opp])
    ipo_grad, = torch.autograd.grad((pi[ys] * pi[opp] * ipo).sum(), theta, retain_graph=True)
    losses, _ = dpo.nash_md_pg_loss(log_pi[:, None], log_mu[:, None], torch.ones(4, 1, dtype=torch.float64),
                                    pref @ pi_mix, tau)
    nash_grad, = torch.autograd.grad((pi * losses).sum(), theta)
    assert ipo_grad.tolist() == pytest.approx((4 / tau * nash_grad).tolist(), abs=1e-10)


def test_nash_md_pg_terms_plays_y_from_pi_against_y_prime_from_the_mixture(monkeypatch):
    # y (tokens 5, 6) from pi alone, y' (token 7) from pi_mix with the reference; P(y > y') from r(y) - r(y');
    # the loss is on y's tokens only
    from types import SimpleNamespace
    calls, seen = [], {}

    def fake_sample(model, prompts, pad_id, eos_id, n, device, dtype, generator, ref=None, mix=None):
        calls.append((ref, mix))
        return ([[5, 6]] if mix is None else [[7]]) * len(prompts), None

    def fake_token_logps(model, ids, attn, resp):
        seen[model] = ids.clone()
        return (torch.full(resp[:, 1:].shape, -1.0 if model == "policy" else -1.5) * resp[:, 1:]).requires_grad_(model == "policy")
    monkeypatch.setattr(dpo, "sample_responses", fake_sample)
    monkeypatch.setattr(dpo, "token_logps", fake_token_logps)
    # scores in the order y(prompt 1), y(prompt 2), y'(prompt 1), y'(prompt 2)
    monkeypatch.setattr(dpo, "reward_scores", lambda rm, ids, attn: torch.tensor([1.0, 0.0, 0.0, 2.0]))
    args = SimpleNamespace(mixture_beta=0.125, max_new_tokens=4, online_labels="soft", tau=0.1)
    tok = SimpleNamespace(pad_token_id=0, eos_token_id=2)
    losses, n_tokens, _, record = dpo.nash_md_pg_terms("policy", "reference", "rm", 0, tok, [[1, 3], [1, 4]], args,
                                                       torch.device("cpu"), None, None)
    assert calls[0] == (None, None) and calls[1][0] == "reference" and calls[1][1] is not None
    lp = torch.tensor([[-1.0, -3.0], [-2.0, -1.0]]).log_softmax(-1)       # the mixture function is IPO-MD's
    assert calls[1][1](lp, lp.flip(-1)).tolist() == dpo.mixture_logps(lp, lp.flip(-1), 0.125).tolist()
    assert 5 in seen["policy"] and 7 not in seen["policy"] and seen["policy"].tolist() == seen["reference"].tolist()
    p = torch.sigmoid(torch.tensor([1.0, -2.0]))
    # two tokens of log-ratio 0.5 each: KL to go 1.0 and 0.5; loss = A_1 + A_2 (each token's log pi is -1)
    assert losses.tolist() == pytest.approx((2 * (p - 0.5) - 0.1 * 1.5).tolist())
    assert record["nash/preference"] == pytest.approx(p.mean().item()) and n_tokens == 8


def test_kl_estimators():
    lp, ref = torch.tensor([-1.0, -2.0]), torch.tensor([-1.5, -1.0])
    assert ppo.kl_per_token(lp, ref, "k1").tolist() == pytest.approx([0.5, -1.0])
    assert ppo.kl_per_token(lp, ref, "clamped").tolist() == pytest.approx([0.5, 0.0])
    k3 = [math.exp(-0.5) - 1 + 0.5, math.exp(1.0) - 1 - 1.0]
    assert ppo.kl_per_token(lp, ref, "k3").tolist() == pytest.approx(k3, rel=1e-6)


def test_rewards_put_score_on_the_last_response_token_with_left_and_right_padding():
    # row 0: response at positions 1..3 (right padding after); row 1: left padding, response at 3..4
    mask = torch.tensor([[False, True, True, True, False], [False, False, False, True, True]])
    lp = torch.tensor([[0.0, -1.0, -1.0, -1.0, 0.0], [0.0, 0.0, 0.0, -2.0, -2.0]])
    ref = torch.tensor([[0.0, -1.5, -1.0, -0.5, 9.0], [9.0, 9.0, 9.0, -1.0, -3.0]])
    rewards, kl = ppo.compute_rewards(lp, ref, mask, torch.tensor([10.0, 20.0]), kl_coef=0.1)
    expect = torch.tensor([[0.0, -0.05, 0.0, 0.05 + 10.0, 0.0], [0.0, 0.0, 0.0, 0.1, -0.1 + 20.0]])
    assert torch.allclose(rewards, expect, atol=1e-6)
    assert torch.all(kl[~mask] == 0)


def gae_reference(rewards, values, mask, gamma, lam):
    """The textbook loop, row by row, over the list of masked positions."""
    adv = torch.zeros_like(rewards)
    for b in range(rewards.shape[0]):
        idx = [t for t in range(rewards.shape[1]) if mask[b, t]]
        last = 0.0
        for k in reversed(range(len(idx))):
            t = idx[k]
            next_v = values[b, idx[k + 1]].item() if k + 1 < len(idx) else 0.0
            delta = rewards[b, t].item() + gamma * next_v - values[b, t].item()
            last = delta + gamma * lam * last
            adv[b, t] = last
    return adv


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.9, 0.8), (1.0, 1.0), (0.99, 0.0)])
def test_gae_matches_reference_loop_on_ragged_masks(gamma, lam):
    g = torch.Generator().manual_seed(0)
    rewards, values = torch.randn(5, 9, generator=g), torch.randn(5, 9, generator=g)
    mask = torch.zeros(5, 9, dtype=torch.bool)
    mask[0, 0:9] = True          # full
    mask[1, 3:9] = True          # left padded
    mask[2, 0:4] = True          # right padded
    mask[3, 2:5] = True          # both
    mask[4, 6] = True            # a single token
    adv, ret = ppo.gae(rewards, values, mask, gamma, lam)
    ref = gae_reference(rewards, values, mask, gamma, lam)
    assert torch.allclose(adv, ref, atol=1e-5)
    assert torch.allclose(ret, (ref + values) * mask, atol=1e-5)
    assert torch.all(adv[~mask] == 0)


def test_gae_hand_computed():
    rewards = torch.tensor([[0.0, 0.0, 1.0]])
    values = torch.tensor([[0.5, 0.2, 0.4]])
    mask = torch.ones(1, 3, dtype=torch.bool)
    adv, _ = ppo.gae(rewards, values, mask, gamma=1.0, lam=0.5)
    d2 = 1.0 - 0.4
    d1 = 0.0 + 0.4 - 0.2
    d0 = 0.0 + 0.2 - 0.5
    assert adv[0].tolist() == pytest.approx([d0 + 0.5 * (d1 + 0.5 * d2), d1 + 0.5 * d2, d2])


def test_ppo_policy_loss_by_hand():
    old = torch.zeros(1, 4)
    new = torch.log(torch.tensor([[1.5, 0.5, 1.1, 2.0]]))
    adv = torch.tensor([[1.0, 1.0, -1.0, 5.0]])
    mask = torch.tensor([[True, True, True, False]])
    loss, clipfrac, approx_kl = ppo.ppo_policy_loss(new, old, adv, mask, cliprange=0.2)
    # token 0: ratio 1.5, A=1 -> max(-1.5, -1.2) = -1.2 (clipped); token 1: ratio 0.5, A=1 ->
    # max(-0.5, -0.8) = -0.5; token 2: ratio 1.1, A=-1 -> max(1.1, 1.1) = 1.1; token 3 masked
    assert loss.item() == pytest.approx((-1.2 - 0.5 + 1.1) / 3, rel=1e-5)
    assert clipfrac.item() == pytest.approx(1 / 3)
    lr = torch.log(torch.tensor([1.5, 0.5, 1.1]))
    assert approx_kl.item() == pytest.approx((0.5 * lr ** 2).mean().item(), rel=1e-5)


def test_ppo_first_ratio_is_one_gives_plain_policy_gradient():
    lp = torch.randn(2, 5)
    adv = torch.randn(2, 5)
    mask = torch.ones(2, 5, dtype=torch.bool)
    loss, clipfrac, approx_kl = ppo.ppo_policy_loss(lp, lp, adv, mask)
    assert loss.item() == pytest.approx(-adv.mean().item(), abs=1e-6)
    assert clipfrac.item() == 0 and approx_kl.item() == 0


def test_ppo_value_loss_by_hand():
    old = torch.tensor([[1.0, 1.0]])
    new = torch.tensor([[1.5, 0.9]])
    ret = torch.tensor([[2.0, 0.0]])
    mask = torch.ones(1, 2, dtype=torch.bool)
    loss, vclip = ppo.ppo_value_loss(new, old, ret, mask, cliprange_value=0.2)
    # token 0: unclipped (1.5-2)^2 = 0.25, clipped (1.2-2)^2 = 0.64 -> 0.64; token 1: (0.9)^2 both
    assert loss.item() == pytest.approx(0.5 * (0.64 + 0.81) / 2, rel=1e-5)
    assert vclip.item() == pytest.approx(0.5)


def test_masked_whiten():
    x = torch.tensor([[1.0, 2.0, 3.0, 100.0]])
    mask = torch.tensor([[True, True, True, False]])
    w = ppo.masked_whiten(x, mask)
    assert w[0, :3].tolist() == pytest.approx([-1.2247, 0.0, 1.2247], abs=1e-3)
    assert w[0, 3] == 0


def test_adaptive_kl_coefficient():
    assert ppo.adaptive_kl_coef(0.1, 12.0, 6.0, 100, 1000) == pytest.approx(0.1 * (1 + 0.2 * 0.1))
    assert ppo.adaptive_kl_coef(0.1, 5.4, 6.0, 100, 1000) == pytest.approx(0.1 * (1 - 0.1 * 0.1))


# ---------------------------------------------------------------------------- split and eval

def test_split_rules():
    rows = [{"chosen": f"c{i}", "rejected": f"r{i}", "gold_chosen": 1.0, "gold_rejected": 0.0} for i in range(4)]
    gaps = [2.0, 0.5, -3.0, -0.2]
    easy, hard = split.split_pairs(rows, gaps, 1.0, "relabel")
    assert [r["chosen"] for r in easy] == ["c0", "r2"] and [r["chosen"] for r in hard] == ["c1", "r3"]
    assert easy[1]["relabelled"] and easy[1]["gap"] == 3.0 and easy[1]["gold_chosen"] == 0.0
    easy, hard = split.split_pairs(rows, gaps, 1.0, "hard")
    assert [r["chosen"] for r in easy] == ["c0"] and [r["chosen"] for r in hard] == ["c1", "c2", "c3"]
    easy, hard = split.split_pairs(rows, gaps, 1.0, "drop")
    assert [r["chosen"] for r in easy] == ["c0"] and [r["chosen"] for r in hard] == ["c1"]
    assert split.label_noise(hard) == 0.0
    assert dpo.original(easy[0]) == easy[0]
    # ties: |d| equal to the threshold is easy (|d| >= threshold); d = 0 is hard and never relabelled
    easy, hard = split.split_pairs(rows[:3], [1.0, -1.0, 0.0], 1.0, "relabel")
    assert [r["chosen"] for r in easy] == ["c0", "r1"] and [r["chosen"] for r in hard] == ["c2"]
    assert not hard[0]["relabelled"]
    assert dpo.original(easy[1])["chosen"] == "c1" and dpo.original(easy[1])["gold_chosen"] == 1.0
    # gold prefers c1, so the RM's relabelling made that pair wrong; as the dataset labelled it, it was right
    assert split.label_noise(easy) == 0.5 and split.label_noise(easy, as_the_dataset_labelled=True) == 0.0
    rows[1]["gold_chosen"] = -1.0    # gold prefers r1: the dataset's label was wrong, the relabelling fixed it
    easy, _ = split.split_pairs(rows[:3], [1.0, -1.0, 0.0], 1.0, "relabel")
    assert split.label_noise(easy) == 0.0 and split.label_noise(easy, as_the_dataset_labelled=True) == 0.5


def test_quantile_threshold():
    gaps = [0.1, -0.2, 0.3, -0.4, 0.5, 1.0, -2.0, 3.0]
    t = split.threshold_for_fraction(gaps, 0.25)
    easy, hard = split.split_pairs([{"chosen": "a", "rejected": "b"}] * 8, gaps, t)
    assert len(easy) == 2 and len(hard) == 6
    assert split.quantile([1, 2, 3, 4], 0.5) == 2.5


def test_easy_fraction_holds_whatever_happens_to_pairs_the_rm_ranks_the_other_way():
    """--easy-fraction 0.5 makes half of the pairs kept easy under every --wrong-way: with 'hard' and 'drop'
    a pair with d < 0 is never easy, so the threshold is a quantile of d, not of |d| (which gave 2 of 8)."""
    gaps = [3, 2.5, -2.8, -2.2, 0.5, -0.3, 0.2, 0.1]
    rows = [{"chosen": "a", "rejected": "b"}] * 8
    # drop keeps the 5 pairs with d >= 0; their median, 0.5, is the threshold and is itself easy: 3 of 5
    for wrong_way, n_easy, n_hard in [("relabel", 4, 4), ("hard", 4, 4), ("drop", 3, 2)]:
        t = split.threshold_for_fraction(gaps, 0.5, wrong_way)
        easy, hard = split.split_pairs(rows, gaps, t, wrong_way)
        assert (len(easy), len(hard)) == (n_easy, n_hard), wrong_way
    # 'hard' cannot reach a share above that of the pairs with d >= 0: the threshold stops at zero
    assert split.threshold_for_fraction(gaps, 0.9, "hard") == 0.0
    assert split.threshold_for_fraction([-1.0, -2.0], 0.5, "drop") == 0.0


def test_a_split_with_an_empty_set_says_why_and_a_tie_at_the_quantile_is_noted(capsys):
    """Every pair with d < 0 under --wrong-way hard or drop: no threshold can make an easy set, and the errors had
    named |d|'s quantiles and suggested one of them (or called the gaps tied). And 60 copies of one pair made
    68% of the pairs easy for --easy-fraction 0.4, said only in the rule's text."""
    import argparse
    rows = [{"chosen": "a", "rejected": "b"}] * 4
    args = lambda wrong_way, fraction=None: argparse.Namespace(wrong_way=wrong_way, easy_fraction=fraction)
    for wrong_way, does in (("hard", "keeps them hard"), ("drop", "drops them")):
        easy, hard = split.split_pairs(rows, [-1.0, -2.0, -0.5, -3.0], 0.045, wrong_way)
        with pytest.raises(split.UserError, match=rf"every pair has d < 0 .*--wrong-way {wrong_way} {does}: no pair "
                                                  rf"can be easy; check the reward model, or pass --wrong-way relabel"):
            split.check_split(easy, hard, [-1.0, -2.0, -0.5, -3.0], 0.045, args(wrong_way))
    gaps = [-1.0, 0.2, 0.4, 0.6]   # the threshold is compared with d here: its quantiles are d's, not |d|'s
    easy, hard = split.split_pairs(rows, gaps, 5.0, "hard")
    with pytest.raises(split.UserError, match=r"threshold 5 leaves the easy set empty; d quantiles: q10=-0.640, "):
        split.check_split(easy, hard, gaps, 5.0, args("hard"))
    gaps = [3.0] + [0.5] * 6 + [0.1] * 3   # a tie at the quantile goes easy as a whole: 70%, not 40%
    t = split.threshold_for_fraction(gaps, 0.4)
    easy, hard = split.split_pairs([rows[0]] * 10, gaps, t)
    split.check_split(easy, hard, gaps, t, args("relabel", 0.4))
    assert "--easy-fraction 0.4 made 70% of the pairs kept easy: 6 pairs share the gap at its quantile (0.500)" \
        in capsys.readouterr().out


def test_win_rate_ties_count_half():
    assert ev.win_rate([1, 2, 3, 0.5], [1, 1, 4, 0.5]) == [0.5, 1.0, 0.0, 0.5]


def test_bootstrap_interval():
    vals = [0.0] * 50 + [1.0] * 50
    clusters = [[v] for v in vals]                      # every prompt its own request
    lo, hi = ev.bootstrap_ci(clusters, 2000, seed=0)
    # the standard error of the mean is 0.05: the 95% interval is about 0.5 +- 0.098
    assert 0.38 < lo < 0.43 and 0.57 < hi < 0.62
    assert ev.bootstrap_ci([[0.7]] * 10, 100) == (pytest.approx(0.7), pytest.approx(0.7))
    assert ev.bootstrap_ci(clusters, 200, seed=3) == ev.bootstrap_ci(clusters, 200, seed=3)
    assert all(math.isnan(x) for x in ev.bootstrap_ci([], 100))


def test_lr_schedule_warmup_then_cosine():
    assert sft.lr_at(0, 100, 0.1, 0.1) == pytest.approx(0.1)
    assert sft.lr_at(9, 100, 0.1, 0.1) == pytest.approx(1.0)
    assert sft.lr_at(99, 100, 0.1, 0.1) == pytest.approx(0.1, abs=1e-3)


def test_interval_over_runs_is_students_t_and_std():
    # several seeds' runs: mean +- t_0.975(n - 1) s / sqrt(n). Three seeds in favour (+0.153, +0.199, +0.035: the
    # README's MPO - vanilla DPO on the RM): mean 0.129, s 0.0845, t(2) 4.303 -> [-0.081, +0.339], no verdict of
    # "reproduced"; a bootstrap over the three runs stopped at their extremes, [+0.035, +0.199], and said it was
    lo, hi = ev.t_interval([0.153, 0.199, 0.035])
    assert (lo, hi) == (pytest.approx(-0.0809, abs=1e-3), pytest.approx(0.3389, abs=1e-3))
    assert ev.verdict(lo, hi, "beats", 50).startswith("not reproduced")
    lo, hi = ev.t_interval([0.285, 0.236, 0.163])          # MPO - vanilla PPO on the RM: still above zero
    assert lo == pytest.approx(0.0757, abs=1e-3) and ev.verdict(lo, hi, "beats", 50) == "reproduced"
    assert ev.t_interval([0.1, 0.3]) == (pytest.approx(0.2 - 12.706 * 0.1), pytest.approx(0.2 + 12.706 * 0.1))
    assert ev.t_interval([0.2] * 4) == (pytest.approx(0.2), pytest.approx(0.2))
    assert ev.t_interval([0.0, 1.0] * 20)[1] == pytest.approx(0.5 + 2.0227 * ev.std([0.0, 1.0] * 20) / 40 ** 0.5, abs=1e-4)
    assert math.isnan(ev.t_interval([0.3])[0])
    assert ev.std([1, 2, 3, 4]) == pytest.approx(1.2909944)
    assert ev.std([5.0]) == 0.0


def test_the_baselines_own_response_ties_whatever_its_rm_score():
    # one response text scored in two batches may differ in its last bits: still a tie, not a win or a loss
    assert ev.win_rate([0.5000001, 0.4, 0.9], [0.5, 0.4, 0.3], same=[True, False, False]) == [0.5, 0.5, 1.0]
    assert ev.ties([0.5000001, 0.4, 0.9], [0.5, 0.4, 0.3], same=[True, False, False]) == [1.0, 1.0, 0.0]
    assert ev.win_rate([0.5000001], [0.5]) == [1.0]


def test_every_accuracy_counts_a_tie_half():
    """02's, 03's and 04's accuracies agree on ties: DPO's first step (policy = reference) reads 0.5, not 0."""
    _, acc, _ = rwd.bradley_terry_loss(torch.tensor([1.0, 2.0, 0.0]), torch.tensor([0.0, 2.0, 1.0]))
    assert acc.item() == pytest.approx(0.5)                                # right, tie, wrong
    zeros = torch.zeros(4)
    assert dpo.preference_metrics([(torch.tensor(0.7), zeros, zeros)])["rewards/accuracy"] == 0.5
    rows = [{"chosen": "a", "rejected": "b"}] * 3
    assert split.bucket_table(rows, [0.0, 0.5, -0.5], [0, 1])[0]["rm_accuracy"] == pytest.approx(0.5)
