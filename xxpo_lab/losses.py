"""Every member of the family as a short composition: ratio × surrogate × aggregation.

Each named loss is a `LossFn`: `fn(logp, b, cfg) -> (loss, LossInfo)`. `logp` [B, T] are the current
log-probs (with grad), `b` is the step's `Batch`, `cfg` the run's `Config`; `loss` is the scalar to
minimise and `LossInfo` what the loss did to each token (detached [B, T] tensors: the ratio, clip masks,
gates, weights), which `diagnostics.loss_metrics` reduces to the glossary's metrics, every field of it.
Read two neighbours side by side: they differ by the line that is the idea. The registry `LOSSES` at
the bottom uses TRL's `loss_type` spelling where one exists.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace

import torch
from torch import Tensor

from xxpo_lab.batch import Batch
from xxpo_lab.blocks import (
    aggregate,
    clip_surrogate,
    clipped_is_pg,
    kl_penalty,
    seq_log_ratio,
    soft_gate,
    token_ratio,
)
from xxpo_lab.config import Config
from xxpo_lab.mismatch import m2_keep

# -------------------------------------------------------------------------------------------------
# the contract


@dataclass(frozen=True)
class LossInfo:
    """What a loss did to each token: detached [B, T] tensors, each reduced to metrics by
    `diagnostics.loss_metrics` (a field with no reduction there fails the tests). Book: appendix B."""

    ratio: Tensor
    """The ratio the surrogate acts on: π_θ/π_prox per token, or GSPO's sequence ratio
    broadcast along T."""
    clip_low: Tensor | None = None
    """bool: the clip zeroed the gradient from below (A < 0, r < 1 - eps_low)."""
    clip_high: Tensor | None = None
    """bool: the clip zeroed the gradient from above (A > 0, r > 1 + eps_high)."""
    out_of_band: Tensor | None = None
    """bool: r outside [1 - eps_low, 1 + eps_high], whatever the sign of A."""
    dual_clip: Tensor | None = None
    """bool: dual clip capped this token's loss at -c·A."""
    is_weight: Tensor | None = None
    """The detached importance weight π_prox/π_behav (decoupled PPO, A-3PO)."""
    is_masked: Tensor | None = None
    """bool: the token was dropped: its importance weight exceeded behav_weight_cap."""
    is_capped: Tensor | None = None
    """bool: the clipped IS weight hit a bound (CISPO; the token keeps its gradient)."""
    gate: Tensor | None = None
    """SAPO's gradient weight of the soft gate (1 at r = 1)."""
    prox_logp: Tensor | None = None
    """The anchor the loss built itself (A-3PO's interpolation), if not b.prox_logp."""
    phi: Tensor | None = None
    """VESPO's Gamma weight of each response's ratio W (ψ(W) in ch. 10), along T."""

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None and value.requires_grad:
                raise ValueError(f"LossInfo.{f.name} carries a gradient; detach it")
        if (self.clip_low is None) != (self.clip_high is None):
            raise ValueError("LossInfo.clip_low and clip_high are reported together")


LossFn = Callable[[Tensor, Batch, Config], tuple[Tensor, LossInfo]]
"""(logp [B, T] with grad, the step's Batch, the run's Config) -> (scalar loss, LossInfo)."""


def _check(logp: Tensor, b: Batch) -> None:
    assert logp.shape == b.mask.shape == b.adv.shape == b.prox_logp.shape, (
        logp.shape,
        b.mask.shape,
    )


def _kl(logp: Tensor, b: Batch, cfg: Config) -> Tensor | float:
    """GRPO-style KL term added to the per-token loss (when cfg.kl_in == 'loss'); with kl_is_correct,
    times the (differentiable) ratio π_θ/π_prox: DeepSeek-V3.2's unbiased estimate (ch. 10)."""
    if cfg.kl_in != "loss":
        return 0.0
    kl = kl_penalty(logp, b.ref_logp, cfg.beta, cfg.kl_estimator)
    return kl * token_ratio(logp, b.prox_logp) if cfg.kl_is_correct else kl


def _clip_info(
    ratio: Tensor, clip_low: Tensor, clip_high: Tensor, cfg, **extra
) -> LossInfo:
    out_of_band = (ratio < 1.0 - cfg.eps_low) | (ratio > 1.0 + cfg.eps_high)
    return LossInfo(
        ratio=ratio.detach(),
        clip_low=clip_low,
        clip_high=clip_high,
        out_of_band=out_of_band.detach(),
        **extra,
    )


# -------------------------------------------------------------------------------------------------
# REINFORCE and PPO


def pg(logp: Tensor, b: Batch, cfg: Config) -> tuple[Tensor, LossInfo]:
    """REINFORCE / importance-weighted policy gradient, no trust region: ℓ = -r·A, token-mean.

    r = π_θ/π_prox. On the first update of a batch r ≡ 1 and the gradient is the plain policy
    gradient -A·∇logp (Williams 1992); on later updates r reweights it with no bound, which is what
    PPO's clip fixes. It differs from `ppo` by the clip alone. The clip masks in `info` are the tokens
    PPO *would* have clipped. Book: ch. 1.
    """
    _check(logp, b)
    r = token_ratio(logp, b.prox_logp)
    loss_bt = -r * b.adv
    clip_low = ((b.adv < 0) & (r < 1.0 - cfg.eps_low)).detach()
    clip_high = ((b.adv > 0) & (r > 1.0 + cfg.eps_high)).detach()
    info = _clip_info(r, clip_low, clip_high, cfg)
    loss_bt = loss_bt + _kl(logp, b, cfg)
    return aggregate(loss_bt, b.mask, "token-mean"), info


def ppo(logp: Tensor, b: Batch, cfg: Config) -> tuple[Tensor, LossInfo]:
    """PPO's clipped surrogate, token-mean: ℓ = -min(r·A, clip(r, 1-eps_low, 1+eps_high)·A).

    Schulman et al. 2017 (arXiv 1707.06347). The same function serves `bnpo` and `dapo` (group
    advantages; DAPO sets eps_high = 0.28) and `sppo` (prompt-critic advantage). Optional dual clip
    (`cfg.dual_clip_c`, verl). The critic's value loss is `critic.value_loss`. Book: ch. 1, 2.
    """
    _check(logp, b)
    r = token_ratio(logp, b.prox_logp)
    loss_bt, clip_low, clip_high, dual = clip_surrogate(
        r, b.adv, cfg.eps_low, cfg.eps_high, cfg.dual_clip_c
    )
    info = _clip_info(r, clip_low, clip_high, cfg, dual_clip=dual)
    loss_bt = loss_bt + _kl(logp, b, cfg)
    return aggregate(loss_bt, b.mask, "token-mean"), info


# -------------------------------------------------------------------------------------------------
# GRPO and the normalisation family


def grpo(logp: Tensor, b: Batch, cfg: Config) -> tuple[Tensor, LossInfo]:
    """GRPO (DeepSeekMath, arXiv 2402.03300): PPO's clip, averaged per sequence, then over sequences.

    J = (1/G) Σ_i (1/|y_i|) Σ_t min(r·A, clip(r)·A) - β·k3. The 1/|y_i| is the length bias of ch. 3.
    With one update per batch r ≡ 1 and the clip never fires (DeepSeekMath's "single update").
    Book: ch. 2, 3.
    """
    _check(logp, b)
    r = token_ratio(logp, b.prox_logp)
    loss_bt, clip_low, clip_high, dual = clip_surrogate(
        r, b.adv, cfg.eps_low, cfg.eps_high, cfg.dual_clip_c
    )
    info = _clip_info(r, clip_low, clip_high, cfg, dual_clip=dual)
    loss_bt = loss_bt + _kl(logp, b, cfg)
    return aggregate(loss_bt, b.mask, "seq-mean-token-mean"), info


def dr_grpo(logp: Tensor, b: Batch, cfg: Config) -> tuple[Tensor, LossInfo]:
    """Dr. GRPO (arXiv 2503.20783): GRPO with a constant normaliser, Σ_i Σ_t ℓ / (B·T_max).

    Every token gets the same weight whatever its sequence's length, so no length bias. The other
    half of Dr. GRPO is the mean-centred advantage (adv 'dr_grpo', no std). TRL `dr_grpo` divides by
    B·max_completion_length, the same; verl's `seq-mean-token-sum-norm` changed meaning between
    releases. Book: ch. 3.
    """
    _check(logp, b)
    r = token_ratio(logp, b.prox_logp)
    loss_bt, clip_low, clip_high, dual = clip_surrogate(
        r, b.adv, cfg.eps_low, cfg.eps_high, cfg.dual_clip_c
    )
    info = _clip_info(r, clip_low, clip_high, cfg, dual_clip=dual)
    loss_bt = loss_bt + _kl(logp, b, cfg)
    return aggregate(loss_bt, b.mask, "seq-mean-token-sum-norm", cfg.T_max), info


# -------------------------------------------------------------------------------------------------
# sequence-level ratios


def gspo(logp: Tensor, b: Batch, cfg: Config) -> tuple[Tensor, LossInfo]:
    """GSPO (arXiv 2507.18071): one length-normalised ratio per sequence, clipped per sequence.

    s_i = exp((1/|y_i|) Σ_t log r_{i,t}); J = (1/G) Σ_i min(s_i·A_i, clip(s_i)·A_i). Clipping drops
    whole sequences; the paper's eps is 3e-4/4e-4. Gradient flows through s_i, as in TRL's
    `importance_sampling_level="sequence"`, so every token of a sequence carries the sequence's mean
    advantage: per-token advantages (GAE) need `gspo_token`, and Config says so. No dual clip, as in
    verl's `gspo`.
    """
    _check(logp, b)
    s = torch.exp(seq_log_ratio(logp, b.prox_logp, b.mask)).expand_as(
        logp
    )  # [B, T], constant along T
    loss_bt, clip_low, clip_high, _ = clip_surrogate(
        s, b.adv, cfg.eps_low, cfg.eps_high
    )
    info = _clip_info(s, clip_low, clip_high, cfg)
    loss_bt = loss_bt + _kl(logp, b, cfg)
    return aggregate(loss_bt, b.mask, "seq-mean-token-mean"), info


def gspo_token(logp: Tensor, b: Batch, cfg: Config) -> tuple[Tensor, LossInfo]:
    """GSPO-token: s_{i,t} = sg(s_i)·π_θ(y_t)/sg(π_θ(y_t)), allowing per-token advantages.

    Same value and gradient as `gspo` when A is constant along a sequence.
    """
    _check(logp, b)
    s = torch.exp(seq_log_ratio(logp, b.prox_logp, b.mask)).detach() * torch.exp(
        logp - logp.detach()
    )
    loss_bt, clip_low, clip_high, _ = clip_surrogate(
        s, b.adv, cfg.eps_low, cfg.eps_high
    )
    info = _clip_info(s, clip_low, clip_high, cfg)
    loss_bt = loss_bt + _kl(logp, b, cfg)
    return aggregate(loss_bt, b.mask, "seq-mean-token-mean"), info


def luspo(logp: Tensor, b: Batch, cfg: Config) -> tuple[Tensor, LossInfo]:
    """LUSPO (arXiv 2602.05261): GSPO with each sequence's loss multiplied by its length.

    J = (1/G) Σ_i |y_i|·min(s_i·A_i, clip(s_i)·A_i). GSPO's per-sequence mean puts back the 1/|y_i| token
    weight Dr. GRPO removed (ch. 3); the factor |y_i| undoes it. The paper's eps is 2e-3/2.5e-3. As TRL
    `loss_type="luspo"` with `importance_sampling_level="sequence"`. Book: ch. 5.
    """
    _check(logp, b)
    s = torch.exp(seq_log_ratio(logp, b.prox_logp, b.mask)).expand_as(
        logp
    )  # [B, T], constant along T
    loss_bt, clip_low, clip_high, _ = clip_surrogate(
        s, b.adv, cfg.eps_low, cfg.eps_high
    )
    info = _clip_info(s, clip_low, clip_high, cfg)
    loss_bt = loss_bt + _kl(logp, b, cfg)
    return aggregate(loss_bt, b.mask, "seq-mean-token-sum"), info


def gmpo(logp: Tensor, b: Batch, cfg: Config) -> tuple[Tensor, LossInfo]:
    """GMPO (arXiv 2507.20673): a geometric instead of an arithmetic mean of the token terms.

    Per token, log r is clipped one-sided by the sign of A (A > 0: at most eps_high; A < 0: at least
    -eps_low; log-space, the paper's (e^-0.4, e^0.4)), averaged over the sequence, exponentiated,
    times A_i; mean over sequences. As verl's `geo_mean`.
    """
    _check(logp, b)
    log_r = logp - b.prox_logp
    clipped = torch.where(
        b.adv > 0,
        torch.clamp(log_r, max=cfg.eps_high),
        torch.clamp(log_r, min=-cfg.eps_low),
    )
    clipped = torch.where(b.adv == 0, torch.zeros_like(log_r), clipped)
    seq_ratio = torch.exp(
        (clipped * b.mask).sum(-1, keepdim=True)
        / b.mask.sum(-1, keepdim=True).clamp(min=1.0)
    )
    loss_bt = -seq_ratio.expand_as(logp) * b.adv
    clip_low = ((b.adv < 0) & (log_r < -cfg.eps_low)).detach()
    clip_high = ((b.adv > 0) & (log_r > cfg.eps_high)).detach()
    info = LossInfo(
        ratio=torch.exp(log_r).detach(),
        clip_low=clip_low,
        clip_high=clip_high,
        out_of_band=(
            log_r.abs() > torch.where(log_r > 0, cfg.eps_high, cfg.eps_low)
        ).detach(),
    )
    loss_bt = loss_bt + _kl(logp, b, cfg)
    return aggregate(loss_bt, b.mask, "seq-mean-token-mean"), info


# -------------------------------------------------------------------------------------------------
# off-policy data: decoupled PPO and A-3PO


def decoupled_ppo(logp: Tensor, b: Batch, cfg: Config) -> tuple[Tensor, LossInfo]:
    """Decoupled PPO (Hilton et al. 2021, arXiv 2110.00641; AReaL): trust region around π_prox,
    importance weight to the behaviour policy.

    ℓ = -w·min(u·A, clip(u)·A) with u = π_θ/π_prox and detached w = π_prox/π_behav. With
    prox = behav (synchronous data) it is PPO. `cfg.behav_weight_cap` masks tokens with w above the cap
    (AReaL's old default, 5).
    """
    _check(logp, b)
    w = torch.exp(
        b.prox_logp - b.behav_logp
    ).detach()  # corrects for stale samples; not a path for grad
    mask = b.mask
    if cfg.behav_weight_cap is not None:
        mask = mask * (w <= cfg.behav_weight_cap)
    u = token_ratio(logp, b.prox_logp)
    loss_bt, clip_low, clip_high, dual = clip_surrogate(
        u, b.adv, cfg.eps_low, cfg.eps_high, cfg.dual_clip_c
    )
    info = _clip_info(
        u,
        clip_low,
        clip_high,
        cfg,
        dual_clip=dual,
        is_weight=w,
        is_masked=(mask < b.mask).detach(),
    )
    loss_bt = w * loss_bt + _kl(logp, b, cfg)
    return aggregate(loss_bt, mask, "token-mean"), info


def interpolate_prox(
    behav_logp: Tensor, logp: Tensor, d: Tensor, method: str = "loglinear"
) -> Tensor:
    """A-3PO's anchor, between the sampler and the detached current policy.

    'loglinear' (the paper): log π̂_prox = α·log π_behav + (1-α)·log π_θ,
    α = 1/d, so u = π_θ/π̂_prox = (π_θ/π_behav)^(1/d). 'linear' (AReaL's
    other method): π̂_prox = α·π_behav + (1-α)·π_θ. Both lie between π_behav
    and π_θ; at d = 1 both are π_behav. behav_logp, logp [B, T], d [B] (>= 1)
    -> [B, T], no gradient. Book: ch. 7.
    """
    alpha = (1.0 / d.clamp(min=1).to(logp.dtype))[:, None]  # [B, 1]
    logp = logp.detach()
    if method == "loglinear":
        return alpha * behav_logp + (1.0 - alpha) * logp
    # log(α·π_behav + (1-α)·π_θ), computed in log space
    return torch.logaddexp(
        alpha.log() + behav_logp, torch.log1p(-alpha) + logp
    )


def a3po(logp: Tensor, b: Batch, cfg: Config) -> tuple[Tensor, LossInfo]:
    """A-3PO (arXiv 2512.06547): decoupled PPO, π_prox interpolated not recomputed.

    π̂_prox = `interpolate_prox(behav_logp, logp, d, cfg.prox_interp)`, d = version being produced -
    behaviour version (our `staleness` + 1, counted per training step). At d = 1 (synchronous)
    π̂_prox = π_behav exactly, so it is decoupled PPO with no extra forward pass. As in AReaL, the
    anchor moves with the (detached) current policy during the step.
    """
    _check(logp, b)
    prox = interpolate_prox(b.behav_logp, logp, b.version_gap, cfg.prox_interp)
    loss, info = decoupled_ppo(logp, replace(b, prox_logp=prox), cfg)
    return loss, replace(info, prox_logp=prox)


# -------------------------------------------------------------------------------------------------
# soft and IS-weighted surrogates


def sapo(logp: Tensor, b: Batch, cfg: Config) -> tuple[Tensor, LossInfo]:
    """SAPO (arXiv 2511.20347): a smooth gate f(r) = σ(τ(r-1))·4/τ instead of the hard clip.

    τ = tau_pos for A > 0, tau_neg (default 1.05 > 1.0) for A ≤ 0; seq-mean-token-mean, as TRL and
    verl. On-policy its gradient is REINFORCE's.
    """
    _check(logp, b)
    r = token_ratio(logp, b.prox_logp)
    loss_bt, gate = soft_gate(r, b.adv, cfg.tau_pos, cfg.tau_neg)
    info = LossInfo(ratio=r.detach(), gate=gate)
    loss_bt = loss_bt + _kl(logp, b, cfg)
    return aggregate(loss_bt, b.mask, "seq-mean-token-mean"), info


def cispo(logp: Tensor, b: Batch, cfg: Config) -> tuple[Tensor, LossInfo]:
    """CISPO (MiniMax-M1, arXiv 2506.13585): clip the detached IS weight, never the update.

    ℓ = -sg(clip(r, 1-eps_low, 1+eps_high))·A·logp, token-mean. Defaults eps_low = 1 (no lower
    bound) and eps_high = 4: TRL's absolute cap `epsilon_high = 5`.
    """
    _check(logp, b)
    r = token_ratio(logp, b.prox_logp)
    loss_bt, capped = clipped_is_pg(
        logp, r, b.adv, 1.0 - cfg.eps_low, 1.0 + cfg.eps_high
    )
    info = LossInfo(ratio=r.detach(), is_capped=capped)
    loss_bt = loss_bt + _kl(logp, b, cfg)
    return aggregate(loss_bt, b.mask, "token-mean"), info


# -------------------------------------------------------------------------------------------------
# trust regions by divergence, and losses for very stale data (ch. 10)

DPPO_RATIO_CAP = 20.0
"""DPPO's truncation C of the detached ratio (verl's `clip_ratio_c` for dppo_*, its default 20; paper §5.4)."""


def _dppo(
    logp: Tensor, b: Batch, up_ok: Tensor, down_ok: Tensor
) -> tuple[Tensor, LossInfo]:
    """The DPPO surrogate, given where a token may still be pushed up (A > 0) and down (A < 0).

    ℓ = -sg(min(r, C))·A·logp·M, M = up_ok where A > 0 and down_ok elsewhere, token-mean.
    """
    r = token_ratio(logp, b.prox_logp)
    up_ok, down_ok = up_ok.detach(), down_ok.detach()
    keep = torch.where(b.adv > 0, up_ok, down_ok)
    loss_bt = -torch.clamp(r, max=DPPO_RATIO_CAP).detach() * b.adv * logp * keep
    info = LossInfo(
        ratio=r.detach(),
        clip_low=(b.adv < 0) & ~down_ok,
        clip_high=(b.adv > 0) & ~up_ok,
        out_of_band=~(up_ok & down_ok),
        is_capped=(r > DPPO_RATIO_CAP).detach(),
    )
    return loss_bt, info


def dppo_tv(logp: Tensor, b: Batch, cfg: Config) -> tuple[Tensor, LossInfo]:
    """DPPO-Binary-TV (Qi et al., arXiv 2602.04879): the trust region bounds how far the sampled token's
    probability moved, p - p_prox, not the ratio p/p_prox.

    A token with A > 0 stops being pushed once p - p_prox > eps_high; one with A < 0 once
    p - p_prox < -eps_low (defaults 0.15, the paper's δ). A rare token (p_prox = 0.001) may grow
    a hundredfold; a likely one (0.95) may not drop to 0.75, which a ratio clip of 0.2 allows. The
    gradient is sg(min(r, 20))·A·∇logp (r·A·∇logp, PPO's, inside the region). As verl's `dppo_tv`
    with clip_ratio as δ and clip_ratio_c = 20.
    """
    _check(logp, b)
    move = logp.detach().exp() - b.prox_logp.exp()  # [B, T]: p - p_prox
    loss_bt, info = _dppo(logp, b, move <= cfg.eps_high, move >= -cfg.eps_low)
    loss_bt = loss_bt + _kl(logp, b, cfg)
    return aggregate(loss_bt, b.mask, "token-mean"), info


def dppo_kl(logp: Tensor, b: Batch, cfg: Config) -> tuple[Tensor, LossInfo]:
    """DPPO-Binary-KL (arXiv 2602.04879): as `dppo_tv`, with the binary KL between the token's old and new
    Bernoulli (sampled or not) as the divergence:

    D = p_prox·log(p_prox/p) + (1-p_prox)·log((1-p_prox)/(1-p)). A > 0 stops when p rose and D > eps_high;
    A < 0 when p fell and D > eps_low (defaults 0.05). As verl's `dppo_kl` (with its 1e-8 in the logs).
    """
    _check(logp, b)
    p, p_prox = logp.detach().exp(), b.prox_logp.exp()
    binary_kl = p_prox * (b.prox_logp - logp.detach()) + (1 - p_prox) * torch.log(
        (1.0 - p_prox + 1e-8) / (1.0 - p + 1e-8)
    )
    up_ok = (binary_kl <= cfg.eps_high) | (p <= p_prox)
    down_ok = (binary_kl <= cfg.eps_low) | (p >= p_prox)
    loss_bt, info = _dppo(logp, b, up_ok, down_ok)
    loss_bt = loss_bt + _kl(logp, b, cfg)
    return aggregate(loss_bt, b.mask, "token-mean"), info


def vespo(logp: Tensor, b: Batch, cfg: Config) -> tuple[Tensor, LossInfo]:
    """VESPO (arXiv 2602.10693): REINFORCE weighted by a smooth kernel of the response's full IS ratio.

    ℓ = -sg(φ(W))·A·logp, φ(W) = e^λ·W^k·e^(-λW) (1 at W = 1, its peak when k = λ, → 0 as W → 0 or ∞),
    W = π_θ(y)/π_behav(y) = exp(Σ_t log r_t), the product over the response, against the sampler.
    (k, λ) = (vespo_k_pos, vespo_lambda_pos) for A >= 0, (vespo_k_neg, vespo_lambda_neg) for A < 0.
    Token-mean. As TRL's `loss_type="vespo"` (its clamps included: log r to ±20, log W to
    [log 1e-8, 20]).
    """
    _check(logp, b)
    log_r = torch.clamp(logp.detach() - b.behav_logp, -20.0, 20.0)
    log_w = (log_r * b.mask).sum(-1, keepdim=True)  # [B, 1]: log W, the whole response
    log_w = torch.clamp(log_w, math.log(1e-8), 20.0)
    nonneg = b.adv >= 0
    k = torch.where(nonneg, cfg.vespo_k_pos, cfg.vespo_k_neg)
    lam = torch.where(nonneg, cfg.vespo_lambda_pos, cfg.vespo_lambda_neg)
    phi = torch.exp(lam + k * log_w - lam * torch.exp(log_w))  # [B, T]: e^λ·W^k·e^(-λW)
    phi = phi.nan_to_num(0.0, 0.0, 0.0)
    loss_bt = -phi * b.adv * logp
    info = LossInfo(ratio=torch.exp(log_w).expand_as(logp), phi=phi)
    loss_bt = loss_bt + _kl(logp, b, cfg)
    return aggregate(loss_bt, b.mask, "token-mean"), info


def m2po(logp: Tensor, b: Batch, cfg: Config) -> tuple[Tensor, LossInfo]:
    """M2PO (Zheng et al., arXiv 2510.01161): no clip; a mask that bounds the batch's second moment.

    ℓ = -M·r·A, token-mean, r = π_θ/π_prox; M = `mismatch.m2_keep` of log(π_θ/π_behav) at
    cfg.m2_threshold (the paper's τ_M2 = 0.04): the fewest tokens whose removal brings the mean
    (log r)² to the threshold. As AReaL's `actor.m2_threshold`.
    """
    _check(logp, b)
    r = token_ratio(logp, b.prox_logp)
    keep = m2_keep(logp.detach() - b.behav_logp, b.adv, b.mask, cfg.m2_threshold)
    loss_bt = -r * b.adv * keep
    info = LossInfo(ratio=r.detach(), is_masked=(~keep & (b.mask > 0)))
    loss_bt = loss_bt + _kl(logp, b, cfg)
    return aggregate(loss_bt, b.mask, "token-mean"), info


# -------------------------------------------------------------------------------------------------
# the other "SPPO": Self-Play Preference Optimization


def self_play_po(logp: Tensor, b: Batch, cfg: Config) -> tuple[Tensor, LossInfo]:
    """Self-Play Preference Optimization (Wu et al. 2024, arXiv 2405.00675), not Sequence-Level PPO.

    ℓ_i = (log π_θ(y_i|x)/π_t(y_i|x) - η·(P̂(y_i ≻ π_t) - ½))², the squared regression of a
    multiplicative-weights update. π_t is the sampler (`prox_logp`); P̂ - ½ comes from the advantage
    'win_rate' (each response against the rest of its group, by verifiable reward).
    """
    _check(logp, b)
    seq_log_r = ((logp - b.prox_logp) * b.mask).sum(
        -1, keepdim=True
    )  # [B, 1]: log of the sequence ratio
    target = (b.adv * b.mask).sum(-1, keepdim=True) / b.mask.sum(
        -1, keepdim=True
    ).clamp(min=1.0)
    loss_bt = ((seq_log_r - cfg.sp_eta * target) ** 2).expand_as(logp)
    info = LossInfo(ratio=torch.exp(seq_log_r).expand_as(logp).detach())
    loss_bt = loss_bt + _kl(logp, b, cfg)
    return aggregate(loss_bt, b.mask, "seq-mean-token-mean"), info


# -------------------------------------------------------------------------------------------------
# the registry


@dataclass(frozen=True)
class Loss:
    fn: LossFn
    """The loss function (logp, batch, cfg) -> (loss, LossInfo)."""
    summary: str
    """One line for `python -m xxpo_lab losses` and the book."""
    defaults: dict = field(default_factory=dict)
    """Config fields this algorithm sets when they are left as None (adv, eps_low, eps_high, tau_pos, tau_neg)."""
    prox: str = "behav"
    """Where prox_logp comes from: 'behav' (the sampler) or 'recompute' (an extra forward pass at the start of the step)."""
    switches: tuple[str, ...] = ()
    """Optional Config switches the loss honours (dual_clip_c, behav_weight_cap, prox_interp, measure_prox); setting
    another is a ConfigError."""
    seq_adv: bool = False
    """The loss needs one advantage per sequence (it differentiates through a sequence ratio)."""
    linear: bool = True
    """Each token's loss is its advantage times a factor that depends only on the sign of the advantage, so a weight
    w >= 0 on the token's loss is the same as the advantage w·A (how `is_mode` and `off_policy_mask` act; ch. 10)."""
    own_is: bool = False
    """The loss measures its ratio against the sampler's log-probs itself (VESPO, M2PO): no `is_mode` on top."""


DUAL = ("dual_clip_c",)
LOSSES = {
    "pg": Loss(
        pg,
        "REINFORCE: importance-weighted policy gradient, no clip, no baseline",
        {"adv": "none"},
    ),
    "ppo": Loss(
        ppo,
        "PPO: token clip, token-mean, critic + GAE advantage",
        {"adv": "gae"},
        switches=DUAL,
    ),
    "grpo": Loss(
        grpo,
        "GRPO: token clip, per-sequence mean (1/|y|), group z-score advantage",
        {"adv": "grpo"},
        switches=DUAL,
    ),
    "bnpo": Loss(
        ppo,
        "BNPO: GRPO with a token-mean over the batch (TRL's bnpo)",
        {"adv": "grpo"},
        switches=DUAL,
    ),
    "dr_grpo": Loss(
        dr_grpo,
        "Dr. GRPO: constant normaliser B*T_max, mean-centred advantage",
        {"adv": "dr_grpo"},
        switches=DUAL,
    ),
    "dapo": Loss(
        ppo,
        "DAPO: token-mean, clip-higher (eps_high 0.28)",
        {"adv": "grpo", "eps_high": 0.28},
        switches=DUAL,
    ),
    "gspo": Loss(
        gspo,
        "GSPO: sequence-level geometric-mean ratio, sequence clip (eps 3e-4/4e-4)",
        {"adv": "grpo", "eps_low": 3e-4, "eps_high": 4e-4},
        seq_adv=True,
    ),
    "gspo_token": Loss(
        gspo_token,
        "GSPO-token: sequence ratio with per-token gradients",
        {"adv": "grpo", "eps_low": 3e-4, "eps_high": 4e-4},
    ),
    "luspo": Loss(
        luspo,
        "LUSPO: GSPO with each sequence's loss times its length (eps 2e-3/2.5e-3)",
        {"adv": "grpo", "eps_low": 2e-3, "eps_high": 2.5e-3},
        seq_adv=True,
    ),
    "decoupled_ppo": Loss(
        decoupled_ppo,
        "Decoupled PPO: clip around a recomputed proximal policy, IS weight to the sampler",
        {"adv": "grpo"},
        prox="recompute",
        switches=DUAL + ("behav_weight_cap",),
    ),
    "a3po": Loss(
        a3po,
        "A-3PO: decoupled PPO with the proximal policy interpolated by staleness",
        {"adv": "grpo"},
        switches=DUAL + ("behav_weight_cap", "prox_interp", "measure_prox"),
    ),
    "sppo": Loss(
        ppo,
        "Sequence-Level PPO: token clip, advantage from a prompt-only critic (G = 1 works)",
        {"adv": "sppo"},
        switches=DUAL,
    ),
    "sapo": Loss(
        sapo,
        "SAPO: soft sigmoid gate instead of a hard clip (tau_pos 1.0, tau_neg 1.05)",
        {"adv": "grpo"},
    ),
    "cispo": Loss(
        cispo,
        "CISPO: clipped, detached IS weight; no token loses its gradient",
        {"adv": "grpo", "eps_low": 1.0, "eps_high": 4.0},
    ),
    "gmpo": Loss(
        gmpo,
        "GMPO: geometric mean of token ratios, per-token log-space clip (0.4)",
        {"adv": "grpo", "eps_low": 0.4, "eps_high": 0.4},
        linear=False,
    ),
    "self_play_po": Loss(
        self_play_po,
        "Self-Play Preference Optimization: squared log-ratio regression onto win rate",
        {"adv": "win_rate"},
        linear=False,
    ),
    "dppo_tv": Loss(
        dppo_tv,
        "DPPO-Binary-TV: trust region on p - p_prox (0.15), not on the ratio",
        {"adv": "grpo", "eps_low": 0.15, "eps_high": 0.15},
    ),
    "dppo_kl": Loss(
        dppo_kl,
        "DPPO-Binary-KL: trust region on the binary KL of the token (0.05)",
        {"adv": "grpo", "eps_low": 0.05, "eps_high": 0.05},
    ),
    "vespo": Loss(
        vespo,
        "VESPO: REINFORCE weighted by a Gamma kernel of the response's IS ratio to the sampler",
        {"adv": "grpo"},
        own_is=True,
    ),
    "m2po": Loss(
        m2po,
        "M2PO: no clip; mask the fewest tokens that bound the batch's mean (log r)^2 (0.04)",
        {"adv": "grpo"},
    ),
}


def get_loss(name: str) -> Loss:
    """The registered loss `name`; unknown names list the valid ones."""
    if name not in LOSSES:
        raise KeyError(f"unknown loss {name!r}; the losses are: {', '.join(LOSSES)}")
    return LOSSES[name]
