"""Golden values for the building blocks in `xxpo_lab.blocks`, with the arithmetic in the comments.

Hand-checked numbers from reference/anchor-codebases.md §B2, §B3, §F and ALGORITHMS.md §0.2-0.4, §9, §10.1.
Gradients are taken with autograd with respect to `logp`; since r = exp(logp - anchor), ∂r/∂logp = r.
"""

import math

import pytest
import torch

from xxpo_lab.blocks import (
    AGG_MODES,
    aggregate,
    clip_surrogate,
    clipped_is_pg,
    kl_k1,
    kl_k2,
    kl_k3,
    kl_penalty,
    seq_log_ratio,
    soft_gate,
    token_ratio,
)

F64 = torch.float64


def t(x):
    return torch.tensor(x, dtype=F64)


def leaf(x):
    return torch.tensor(x, dtype=F64, requires_grad=True)


def check(actual, expected, atol=1e-6):
    torch.testing.assert_close(actual, torch.as_tensor(expected, dtype=actual.dtype), atol=atol, rtol=0)


# -------------------------------------------------------------------------------------------------
# PPO's clipped surrogate, eps = 0.2 (band [0.8, 1.2]); ℓ = -min(r·A, clip(r)·A)

R_CASES = [1.5, 0.5, 0.5, 1.5, 1.1]
A_CASES = [+1.0, -1.0, +1.0, -1.0, +1.0]


def _clip_cases(dual_clip_c=0.0, r=R_CASES, A=A_CASES):
    logp = leaf([[math.log(x) for x in r]])  # [1, 5], so that r = exp(logp - 0)
    ratio = token_ratio(logp, torch.zeros_like(logp))
    loss_bt, low, high, dual = clip_surrogate(ratio, t([A]), 0.2, 0.2, dual_clip_c)
    (grad,) = torch.autograd.grad(loss_bt.sum(), logp)
    return loss_bt.detach(), grad, low, high, dual


def test_clip_golden_values_and_gradients():
    loss_bt, grad, _, _, _ = _clip_cases()
    # (r, A)      loss = -min(r·A, clip(r)·A)         active branch   ∂ℓ/∂logp
    # (1.5, +1)   -min(1.5, 1.2)   = -1.20            clipped         0
    # (0.5, -1)   -min(-0.5, -0.8) = +0.80            clipped         0
    # (0.5, +1)   -min(0.5, 0.8)   = -0.50            unclipped       -r·A = -0.5 (may move back up)
    # (1.5, -1)   -min(-1.5, -1.2) = +1.50            unclipped       -r·A = +1.5 (dual clip's case)
    # (1.1, +1)   inside the band  = -1.10            unclipped       -r·A = -1.1
    check(loss_bt, [[-1.20, 0.80, -0.50, 1.50, -1.10]])
    check(grad, [[0.0, 0.0, -0.5, 1.5, -1.1]])


def test_clip_masks_mark_exactly_the_zero_gradient_tokens():
    _, grad, low, high, dual = _clip_cases()
    # clip_low: A < 0 and r < 0.8 -> token 1; clip_high: A > 0 and r > 1.2 -> token 0.
    # (0.5, +1) and (1.5, -1) are out of the band but not clipped: their gradient flows.
    assert low.tolist() == [[False, True, False, False, False]]
    assert high.tolist() == [[True, False, False, False, False]]
    assert not dual.any()
    assert ((low | high) == (grad == 0)).all()


def test_dual_clip_caps_negative_advantage_loss_at_c_times_abs_A():
    loss_bt, grad, _, _, dual = _clip_cases(dual_clip_c=3.0, r=[5.0, 2.0, 5.0], A=[-1.0, -1.0, +1.0])
    # (5, -1): ordinary loss -min(-5, -1.2) = 5 > cap -c·A = 3 -> loss 3, constant, so zero gradient
    # (2, -1): ordinary loss 2 < 3 -> not capped, gradient -r·A = +2
    # (5, +1): cap applies to A < 0 only; ordinary clip -> -1.2, gradient 0
    check(loss_bt, [[3.0, 2.0, -1.2]])
    check(grad, [[0.0, 2.0, 0.0]])
    assert dual.tolist() == [[True, False, False]]


# -------------------------------------------------------------------------------------------------
# aggregation (anchor §B3): seq 0 has 3 tokens with A = +1, seq 1 has 1 token with A = -1, r = 1,
# so every per-token loss is -A and ∂ℓ_t/∂logp_t = -A (because ∂r/∂logp = r = 1)

AGG_CASES = [
    # token-mean: (-1 -1 -1 +1) / 4 = -0.5; each token gets -A/4
    ("token-mean", -0.5, [[-1 / 4] * 3, [1 / 4, 0, 0]]),
    # seq-mean-token-mean: ((-3)/3 + (+1)/1) / 2 = 0.0; seq 0 tokens -A/(2·3), seq 1 token -A/(2·1): 3x the push
    ("seq-mean-token-mean", 0.0, [[-1 / 6] * 3, [1 / 2, 0, 0]]),
    # seq-mean-token-sum: ((-3) + (+1)) / 2 = -1.0; each token -A/2
    ("seq-mean-token-sum", -1.0, [[-1 / 2] * 3, [1 / 2, 0, 0]]),
    # seq-mean-token-sum-norm, T_max = 3: (-3 + 1) / (2·3) = -0.3333; each token -A/6, whatever its length
    ("seq-mean-token-sum-norm", -1 / 3, [[-1 / 6] * 3, [1 / 6, 0, 0]]),
]


@pytest.mark.parametrize("mode, loss, grad", AGG_CASES, ids=[c[0] for c in AGG_CASES])
def test_aggregation_golden_values_and_per_token_gradients(mode, loss, grad):
    mask = t([[1, 1, 1], [1, 0, 0]])
    adv = t([[1.0], [-1.0]]).expand(2, 3)
    logp = leaf([[0.0] * 3] * 2)
    ratio = token_ratio(logp, logp.detach())  # on-policy: r = 1
    out = aggregate(-ratio * adv, mask, mode, T_max=3)
    out.backward()
    check(out.detach(), loss)
    check(logp.grad, grad)  # padding tokens get exactly zero


def test_aggregation_unknown_mode_lists_the_modes():
    with pytest.raises(KeyError) as err:
        aggregate(t([[1.0]]), t([[1.0]]), "token-sum")
    assert err.value.args[0] == "unknown aggregation 'token-sum'; the modes are: " + ", ".join(AGG_MODES)


# -------------------------------------------------------------------------------------------------
# GSPO's sequence ratio


def test_gspo_sequence_ratio_is_geometric_mean_of_token_ratios():
    # log-ratios (0.3, -0.1, 0.1) on valid tokens, 5.0 on padding (ignored):
    # log s = (0.3 - 0.1 + 0.1) / 3 = 0.1, s = e^0.1 = 1.10517 (= (e^0.3 · e^-0.1 · e^0.1)^(1/3))
    logp = t([[0.3, -0.1, 0.1, 5.0]])
    log_s = seq_log_ratio(logp, torch.zeros_like(logp), t([[1, 1, 1, 0]]))
    assert log_s.shape == (1, 1)
    check(torch.exp(log_s), [[1.10517]], atol=1e-5)


# -------------------------------------------------------------------------------------------------
# SAPO's soft gate f(r) = σ(τ(r-1))·4/τ; ℓ = -f(r)·A; slope f'(r) = 4σ(1-σ) = sech²(τ(r-1)/2)


def _gate_and_slope(r, A, tau_pos, tau_neg):
    ratio = leaf(r)
    loss_bt, w = soft_gate(ratio, t(A), tau_pos, tau_neg)
    (slope,) = torch.autograd.grad((-loss_bt * t(A)).sum(), ratio)  # A = ±1, so -ℓ·A = f(r)
    return -loss_bt.detach() * t(A), slope, w


@pytest.mark.parametrize("tau", [1.0, 1.05])
def test_sapo_gate_is_2_over_tau_with_slope_1_at_r_1(tau):
    # f(1) = σ(0)·4/τ = 2/τ (2 for τ = 1, 1.905 for τ = 1.05): the value is not 1 ...
    # f'(1) = 4·σ(0)·(1 - σ(0)) = 4·½·½ = 1: ... but the slope is, so on-policy SAPO is REINFORCE
    f, slope, w = _gate_and_slope([[1.0]], [[1.0]], tau, tau)
    check(f, [[2 / tau]])
    check(slope, [[1.0]])
    check(w, [[1.0]])


SAPO_TABLE_R = [0.5, 0.8, 0.9, 1.0, 1.1, 1.2, 1.5, 2.0, 3.0, 5.0]
SAPO_TABLE = {  # ALGORITHMS.md §9, weight w = sech²(τ(r-1)/2), 3 decimals; symmetric in r - 1 (on log scale it is not)
    1.0: [0.940, 0.990, 0.998, 1, 0.998, 0.990, 0.940, 0.786, 0.420, 0.071],
    1.05: [0.934, 0.989, 0.997, 1, 0.997, 0.989, 0.934, 0.768, 0.389, 0.058],
    10.0: [0.027, 0.420, 0.786, 1, 0.786, 0.420, 0.027, 0.000, 0, 0],
}


@pytest.mark.parametrize("tau", SAPO_TABLE)
def test_sapo_gradient_weight_table(tau):
    # e.g. τ = 1, r = 1.5: σ(0.5) = 0.6225, 4·0.6225·0.3775 = 0.940: a token at r = 1.5 keeps 94% of its weight
    f, slope, w = _gate_and_slope([SAPO_TABLE_R], [[1.0] * 10], tau, tau)
    check(w, [SAPO_TABLE[tau]], atol=6e-4)  # table is rounded to 3 decimals
    check(slope, w)  # the returned weight is the gate's slope


def test_sapo_temperature_is_picked_by_the_sign_of_the_advantage():
    # r = 1.5 with A = +1 uses tau_pos = 1 (w = 0.940), with A = -1 uses tau_neg = 10 (w = 0.027)
    _, _, w = _gate_and_slope([[1.5, 1.5]], [[1.0, -1.0]], tau_pos=1.0, tau_neg=10.0)
    check(w, [[0.940, 0.027]], atol=6e-4)


# -------------------------------------------------------------------------------------------------
# CISPO: ℓ = -sg(clip(r, low, high))·A·logp


def test_cispo_keeps_the_gradient_of_capped_tokens():
    # bounds [0.8, 1.2]; ∂ℓ/∂logp = -clip(r)·A (the weight is detached, so only the logp factor carries grad)
    # (3.0, +1): weight capped at 1.2 -> grad -1.2   (PPO: clipped, grad 0)
    # (0.5, -1): weight capped at 0.8 -> grad +0.8   (PPO: clipped, grad 0)
    # (1.1, +1): in the band, weight 1.1 -> grad -1.1 (PPO: -1.1 too)
    logp = leaf([[math.log(3.0), math.log(0.5), math.log(1.1)]])
    ratio = token_ratio(logp, torch.zeros_like(logp))
    adv = t([[1.0, -1.0, 1.0]])
    loss_bt, capped = clipped_is_pg(logp, ratio, adv, 0.8, 1.2)
    (grad,) = torch.autograd.grad(loss_bt.sum(), logp)
    check(grad, [[-1.2, 0.8, -1.1]])
    assert capped.tolist() == [[True, True, False]]
    ppo_loss, _, _, _ = clip_surrogate(ratio, adv, 0.2, 0.2)
    (ppo_grad,) = torch.autograd.grad(ppo_loss.sum(), logp)
    check(ppo_grad, [[0.0, 0.0, -1.1]])


# -------------------------------------------------------------------------------------------------
# KL estimators (ALGORITHMS.md §0.4)


def test_kl_estimator_golden_values():
    # Sign convention: the anchor's "log-ratios (0.1, -0.2, 0.0)" are log ρ = log π_ref - log π_θ
    # (Schulman's ρ = π_ref/π_θ), so we set logp = 0 and ref_logp = log ρ. Then:
    # k1 = -log ρ = (-0.1, 0.2, 0.0), mean 0.1/3 = 0.0333        (the other convention would give -0.0333)
    # k2 = ½(log ρ)² = (0.005, 0.02, 0), mean 0.025/3 = 0.008333
    # k3 = ρ - 1 - log ρ = (e^0.1 - 1.1, e^-0.2 - 0.8, 0) = (0.005171, 0.018731, 0), mean 0.007967
    #    (the other convention would give (0.004837 + 0.021403)/3 = 0.008747, so k3 pins the convention too)
    logp = t([[0.0, 0.0, 0.0]])
    ref_logp = t([[0.1, -0.2, 0.0]])
    check(kl_k1(logp, ref_logp).mean(), 0.033333, atol=1e-6)
    check(kl_k2(logp, ref_logp).mean(), 0.008333, atol=1e-6)
    check(kl_k3(logp, ref_logp).mean(), 0.007967, atol=1e-6)


def test_k3_is_nonnegative_where_k1_is_not():
    gen = torch.Generator().manual_seed(0)
    logp, ref_logp = 3 * torch.randn(2, 64, 50, generator=gen, dtype=F64)
    assert (kl_k1(logp, ref_logp) < 0).any()
    assert (kl_k3(logp, ref_logp) >= 0).all()  # e^x ≥ 1 + x


def test_k1_and_k3_values_are_unbiased_k2_is_not():
    # E_{y~π}[k] by enumeration over a 4-way categorical, against KL(π‖ref) = Σ π (log π - log ref)
    logp = torch.log_softmax(t([[0.5, -1.0, 0.2, 1.5]]), -1)
    ref_logp = torch.log_softmax(t([[0.0, 0.3, -0.4, 0.1]]), -1)
    pi = logp.exp()
    kl = (pi * (logp - ref_logp)).sum()
    check((pi * kl_k1(logp, ref_logp)).sum(), kl)
    check((pi * kl_k3(logp, ref_logp)).sum(), kl)
    assert abs((pi * kl_k2(logp, ref_logp)).sum() - kl) > 1e-3


# -------------------------------------------------------------------------------------------------
# edges that mutation testing (make mutate) found unpinned


def test_dual_clip_cap_scales_with_the_advantage():
    # (r, A) = (4, -2): ordinary loss -min(-8, -1.6) = 8 > cap -c·A = 3·2 = 6 -> 6 (with A = -1, -c·A = -c/A)
    # (2, -2): ordinary loss 4 < 6 -> not capped
    loss_bt, grad, _, _, dual = _clip_cases(dual_clip_c=3.0, r=[4.0, 2.0], A=[-2.0, -2.0])
    check(loss_bt, [[6.0, 4.0]])
    check(grad, [[0.0, 4.0]])  # -r·A = 4 where not capped
    assert dual.tolist() == [[True, False]]


def test_tokens_with_zero_advantage_are_never_counted_as_clipped():
    # TRL's clip metrics (is_low_clipped = (r < 1 - eps) & (A < 0), likewise high) count only tokens whose
    # gradient the clip removed; a token with A = 0 has no gradient to remove, whatever its ratio
    _, _, low, high, _ = _clip_cases(r=[0.5, 1.5], A=[0.0, 0.0])
    assert not low.any() and not high.any()


def test_cispo_weight_on_its_bounds_is_not_capped():
    # r exactly at the bounds 0.5 and 2.0: clamp leaves it unchanged, so it is not a capped token
    logp = leaf([[math.log(0.5), math.log(2.0), math.log(3.0)]])
    ratio = token_ratio(logp, torch.zeros_like(logp))
    _, capped = clipped_is_pg(logp, ratio, t([[1.0, 1.0, 1.0]]), 0.5, 2.0)
    assert capped.tolist() == [[False, False, True]]


def test_token_mean_of_one_valid_token_is_that_tokens_loss():
    # a minibatch whose mask holds a single token (a 1-token answer, the rest padding): the mean is that token
    loss = aggregate(t([[0.7, 5.0], [9.0, 9.0]]), t([[1.0, 0.0], [0.0, 0.0]]), "token-mean")
    check(loss, 0.7)


def test_the_norm_mode_without_t_max_says_what_it_needs():
    with pytest.raises(AssertionError, match="^seq-mean-token-sum-norm needs the constant T_max$"):
        aggregate(t([[1.0]]), t([[1.0]]), "seq-mean-token-sum-norm")


def test_no_reference_means_no_kl_penalty_whatever_beta():
    assert kl_penalty(t([[-1.0]]), None, 0.04, "k3") == 0.0
    assert kl_penalty(t([[-1.0]]), t([[-2.0]]), 0.0, "k3") == 0.0
