"""The building blocks every policy loss is made of: ratios, surrogates, aggregation, KL estimators.

Pure functions over response-only tensors of shape [B, T] with a float `mask` that is 1 on every
generated token (EOS included) and 0 on padding. No model, no optimizer, no `.item()`.
The named losses in `losses.py` are short compositions of these.
"""

from __future__ import annotations

import torch
from torch import Tensor

# -------------------------------------------------------------------------------------------------
# ratios


def token_ratio(logp: Tensor, anchor_logp: Tensor) -> Tensor:
    """Per-token importance ratio r = exp(logp - anchor_logp).

    r_{i,t} = π_θ(y_{i,t}|x, y_{i,<t}) / π_anchor(y_{i,t}|x, y_{i,<t}), computed in log space. The anchor
    is `prox_logp` for the trust region (PPO, GRPO) or `behav_logp` for an importance weight.
    Schulman et al. 2017 (arXiv 1707.06347). Book: ch. 1.

    Args: logp [B, T] (with grad), anchor_logp [B, T] (no grad). Returns: [B, T].
    """
    assert logp.shape == anchor_logp.shape, (logp.shape, anchor_logp.shape)
    return torch.exp(logp - anchor_logp)


def seq_log_ratio(logp: Tensor, anchor_logp: Tensor, mask: Tensor) -> Tensor:
    """Length-normalised sequence log-ratio: log s_i = (1/|y_i|) Σ_t (logp - anchor_logp).

    GSPO's s_i = (π_θ(y_i|x)/π_anchor(y_i|x))^(1/|y_i|), the geometric mean of the token ratios
    (Zheng et al. 2025, arXiv 2507.18071). TRL (`importance_sampling_level="sequence"`) computes the
    same; verl additionally clamps log s at 10.

    Args: logp, anchor_logp, mask [B, T]. Returns: [B, 1] (broadcasts along T).
    """
    assert logp.shape == anchor_logp.shape == mask.shape
    return ((logp - anchor_logp) * mask).sum(-1, keepdim=True) / mask.sum(
        -1, keepdim=True
    ).clamp(min=1.0)


# -------------------------------------------------------------------------------------------------
# surrogates: each returns the per-token loss (to be minimised) and what the diagnostics need


def clip_surrogate(
    ratio: Tensor,
    adv: Tensor,
    eps_low: float,
    eps_high: float,
    dual_clip_c: float = 0.0,
):
    """PPO's clipped surrogate, as a loss: ℓ = -min(r·A, clip(r, 1-eps_low, 1+eps_high)·A).

    The gradient is r·A·∇logp unless the clipped branch is active, i.e. (A > 0 and r > 1+eps_high)
    or (A < 0 and r < 1-eps_low): there it is exactly zero. A token with A < 0 and r ≫ 1 is *not*
    clipped and its loss grows without bound; dual clip (Ye et al. 2020, arXiv 1912.09729; verl's
    `clip_ratio_c`, default 3) caps it at -c·A. TRL 1.16's `delta` caps the unclipped ratio at δ
    for every token: the same as dual clip with c = δ when δ ≥ 1 + eps_high (off by default).
    Asymmetric eps is DAPO's clip-higher. Book: ch. 1 (the case table).

    Args: ratio, adv [B, T]; eps_low, eps_high > 0; dual_clip_c (0 = off, else > 1).
    Returns: (loss_bt [B, T], clip_low [B, T] bool, clip_high [B, T] bool, dual [B, T] bool), where
    clip_low/clip_high mark tokens whose gradient the clip zeroed, and dual marks dual-clip caps.
    """
    assert ratio.shape == adv.shape
    unclipped = -ratio * adv
    clipped = -torch.clamp(ratio, 1.0 - eps_low, 1.0 + eps_high) * adv
    loss_bt = torch.maximum(unclipped, clipped)
    clip_low = (adv < 0) & (ratio < 1.0 - eps_low)
    clip_high = (adv > 0) & (ratio > 1.0 + eps_high)
    dual = torch.zeros_like(clip_low)
    if dual_clip_c:
        cap = -dual_clip_c * adv  # only binds for A < 0 and r > c
        dual = (adv < 0) & (loss_bt > cap)
        loss_bt = torch.where(dual, cap, loss_bt)
    return loss_bt, clip_low.detach(), clip_high.detach(), dual.detach()


def soft_gate(ratio: Tensor, adv: Tensor, tau_pos: float, tau_neg: float):
    """SAPO's soft gate instead of a hard clip: ℓ = -f(r)·A with f(r) = σ(τ(r-1))·4/τ.

    τ = tau_pos where A > 0, else tau_neg. The gradient weight relative to plain PG is
    w = sech²(τ(r-1)/2) = 4σ(1-σ): exactly 1 at r = 1 (so on-policy SAPO is REINFORCE), smooth,
    never zero, symmetric in r-1. The gate's value at r = 1 is 2/τ, not 1. Gao et al. 2025
    (arXiv 2511.20347); TRL's `sapo` and verl's `sapo` compute the same.

    Args: ratio, adv [B, T]; tau_pos, tau_neg > 0. Returns: (loss_bt [B, T], w [B, T] detached).
    """
    assert ratio.shape == adv.shape
    tau = torch.where(
        adv > 0, torch.full_like(adv, tau_pos), torch.full_like(adv, tau_neg)
    )
    gate = torch.sigmoid(tau * (ratio - 1.0))
    loss_bt = -gate * 4.0 / tau * adv
    return loss_bt, (4.0 * gate * (1.0 - gate)).detach()


def clipped_is_pg(logp: Tensor, ratio: Tensor, adv: Tensor, low: float, high: float):
    """CISPO's surrogate: ℓ = -sg(clip(r, low, high))·A·logp.

    The importance weight is clipped and detached, so no token ever loses its gradient (PPO's clip
    zeroes it). MiniMax-M1 (arXiv 2506.13585). verl clips to [1-eps_low, 1+eps_high]; TRL clamps only
    above, at an absolute cap `epsilon_high` (docs suggest 5). We take the bounds as given.


    Args: logp, ratio, adv [B, T]; low < high. Returns: (loss_bt, capped [B, T] bool: weight hit a bound).
    """
    assert logp.shape == ratio.shape == adv.shape
    weight = torch.clamp(
        ratio, low, high
    ).detach()  # a weight, not a path for the gradient
    capped = ((ratio < low) | (ratio > high)).detach()
    return -weight * adv * logp, capped


# -------------------------------------------------------------------------------------------------
# aggregation: how per-token losses become one number (the length-bias knob)

AGG_MODES = (
    "token-mean",
    "seq-mean-token-mean",
    "seq-mean-token-sum",
    "seq-mean-token-sum-norm",
)


def aggregate(
    loss_bt: Tensor, mask: Tensor, mode: str, T_max: int | None = None
) -> Tensor:
    """Reduce a per-token loss [B, T] to a scalar. The modes are verl's `loss_agg_mode` names:

    token-mean               Σ_i Σ_t ℓ / Σ_i |y_i|          DAPO, TRL bnpo/dapo, verl default
    seq-mean-token-mean      (1/B) Σ_i (1/|y_i|) Σ_t ℓ       original GRPO, GSPO, SAPO; TRL grpo
    seq-mean-token-sum       (1/B) Σ_i Σ_t ℓ                 REINFORCE on sequences
    seq-mean-token-sum-norm  (1/(B·T_max)) Σ_i Σ_t ℓ         Dr. GRPO; TRL dr_grpo

    A token of a length-|y| sequence gets weight 1/|y| under seq-mean-token-mean: short wrong answers
    are pushed down hardest, long wrong ones least (Dr. GRPO's length bias, arXiv 2503.20783).
    verl's `-norm` mode divides by a `loss_scale_factor` and, in some releases, not by B.
    Book: ch. 3.

    Args: loss_bt, mask [B, T]; mode in AGG_MODES; T_max for the -norm mode. Returns: scalar.
    """
    assert loss_bt.shape == mask.shape, (loss_bt.shape, mask.shape)
    if mode == "token-mean":
        return (loss_bt * mask).sum() / mask.sum().clamp(min=1.0)
    if mode == "seq-mean-token-mean":
        return ((loss_bt * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
    if mode == "seq-mean-token-sum":
        return (loss_bt * mask).sum(-1).mean()
    if mode == "seq-mean-token-sum-norm":
        assert T_max is not None, "seq-mean-token-sum-norm needs the constant T_max"
        return (loss_bt * mask).sum() / (loss_bt.shape[0] * T_max)
    raise KeyError(
        f"unknown aggregation {mode!r}; the modes are: {', '.join(AGG_MODES)}"
    )


# -------------------------------------------------------------------------------------------------
# KL estimators (Schulman, "Approximating KL Divergence", 2020)


def kl_k1(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """k1 = log π_θ - log π_ref per token. Unbiased for KL(π_θ‖π_ref) on samples of π_θ; can be < 0.

    As a loss term its expected gradient is 0; as a reward penalty it gives the reverse-KL gradient.
     Args/returns: [B, T].
    """
    return logp - ref_logp


def kl_k2(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """k2 = ½ (log π_θ - log π_ref)² per token. Biased, low variance; as a loss term its expected
    gradient is the reverse-KL gradient ∇KL(π_θ‖π_ref).  Args/returns: [B, T]."""
    return 0.5 * (logp - ref_logp) ** 2


def kl_k3(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """k3 = ρ - 1 - log ρ with ρ = π_ref/π_θ per token (GRPO's KL term). Unbiased and ≥ 0 as a value;
    as a loss term its expected gradient is the *forward*-KL gradient ∇KL(π_ref‖π_θ) (verl PR #2953).
    TRL multiplies it by the ratio by default (`use_bias_correction_kl`); verl clamps it to ±10; we do
    neither.  Args/returns: [B, T]."""
    log_rho = ref_logp - logp
    return torch.exp(log_rho) - 1.0 - log_rho


KL_ESTIMATORS = {"k1": kl_k1, "k2": kl_k2, "k3": kl_k3}


def kl_penalty(
    logp: Tensor, ref_logp: Tensor | None, beta: float, estimator: str
) -> Tensor | float:
    """beta · k(logp, ref_logp) per token, to be added to a per-token loss; 0.0 without a reference."""
    if ref_logp is None or beta == 0.0:
        return 0.0
    return beta * KL_ESTIMATORS[estimator](logp, ref_logp)
