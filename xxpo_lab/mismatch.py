"""The sampler is not the trainer: a sampler in another precision or with top-p/top-k, and the corrections.

An inference engine samples with the same weights as the trainer but computes different probabilities
(precision, kernels, sampling transforms), so `behav_logp` (what the sampler recorded) differs from what
the trainer computes for the same weights and tokens. Here: the sampler's copy of the policy
(`sampler_copy`, `load_sampler`), the sampling transforms (`filter_logp`), and the corrections, pure
functions over [B, T] tensors: TRL's four importance-sampling modes (`is_weight`), DeepSeek-V3.2's
off-policy sequence mask (`off_policy_sequence_mask`), M2PO's second-moment mask (`m2_keep`).
Book: ch. 10.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import Tensor

SAMPLER_DTYPES = ("float32", "bfloat16", "float16", "float8")
IS_MODES = (
    "none",
    "token_truncate",
    "token_mask",
    "sequence_truncate",
    "sequence_mask",
)
FP8_MAX = 448.0  # largest finite float8_e4m3fn value


# -------------------------------------------------------------------------------------------------
# the sampler


def supported_sampler_dtypes(device: torch.device) -> tuple[str, ...]:
    """The sampler dtypes this device runs: all on CPU; on CUDA bfloat16 needs hardware support."""
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return tuple(d for d in SAMPLER_DTYPES if d != "bfloat16")
    return SAMPLER_DTYPES


def fp8_round(w: Tensor) -> Tensor:
    """Round a weight to float8 (e4m3) with one scale per tensor, and back to its dtype.

    The scale maps max |w| to 448, e4m3's largest value, as FP8 rollout engines do for linear
    weights; e4m3 keeps 3 mantissa bits, a relative error up to 1/16 per weight.
    """
    scale = w.abs().max().clamp(min=1e-12) / FP8_MAX
    return ((w / scale).to(torch.float8_e4m3fn).to(w.dtype)) * scale


def sampler_copy(policy: torch.nn.Module, dtype: str) -> torch.nn.Module:
    """A frozen copy of the policy that samples in `dtype` (load weights into it with `load_sampler`).

    'bfloat16'/'float16': every parameter and every activation in that dtype (the log-softmax is
    taken in float32, as engines do). 'float8': the linear layers' weights rounded to float8 with
    a scale per tensor (`fp8_round`), computed in float32; embeddings (and GPT-2's output head,
    which shares them), biases and layer norms stay float32, as in FP8 rollout engines.
    """
    sampler = copy.deepcopy(policy).requires_grad_(False)
    if dtype in ("bfloat16", "float16"):
        sampler.to(getattr(torch, dtype))
    return sampler


@torch.no_grad()
def load_sampler(sampler: torch.nn.Module, weights: dict, dtype: str) -> None:
    """Copy float32 `weights` into the sampler (casting them to its dtype), then round float8's."""
    sampler.load_state_dict(weights)
    if dtype == "float8":
        for name, p in sampler.named_parameters():
            if p.dim() == 2 and "wte" not in name and "wpe" not in name:
                p.copy_(fp8_round(p))


def filter_logp(step_logp: Tensor, top_p: float, top_k: int) -> Tensor:
    """The distribution a top-k / top-p sampler draws from, as log-probs: the kept tokens renormalised.

    top_k > 0 keeps the k most likely tokens; top_p < 1 keeps the smallest set of most likely tokens
    whose probability reaches top_p (the token that crosses it included, so at least one). The
    log-prob of a kept token rises by -log S, S the kept mass: exactly the sampler/trainer gap of a
    trainer that does not apply the same filter. Args: step_logp [B, V]. Returns: [B, V], -inf on
    dropped tokens.
    """
    if top_k <= 0 and top_p >= 1.0:
        return step_logp
    keep = torch.ones_like(step_logp, dtype=torch.bool)
    sorted_logp, order = step_logp.sort(dim=-1, descending=True)
    ranked = torch.ones_like(keep)
    if top_k > 0:
        ranked[:, top_k:] = False
    if top_p < 1.0:
        before = (
            sorted_logp.exp().cumsum(-1) - sorted_logp.exp()
        )  # mass of the more likely tokens
        ranked &= before < top_p
    keep = keep.scatter(-1, order, ranked)
    return torch.log_softmax(step_logp.masked_fill(~keep, -math.inf), dim=-1)


# -------------------------------------------------------------------------------------------------
# the corrections


def is_weight(
    prox_logp: Tensor,
    behav_logp: Tensor,
    mask: Tensor,
    mode: str,
    clip_min: float | None,
    clip_max: float | None,
) -> Tensor:
    """TRL's `vllm_importance_sampling_mode`: the weight each token's loss is multiplied by.

    ρ = π_prox/π_behav: the trainer's probability of the token under the weights that sampled it,
    over the sampler's. Token modes take ρ per token; sequence modes the product over the response,
    exp(Σ_t log ρ_t) (not GSPO's geometric mean). `*_truncate` clamps it to [clip_min, clip_max]
    (TIS, Yao et al. 2025); `*_mask` keeps it where it lies in [clip_min, clip_max] and sets it to 0
    elsewhere (MIS; IcePop's two-sided band). A bound of None is no bound. Same as TRL 1.16.
    Args: prox_logp, behav_logp, mask [B, T]. Returns: [B, T] (sequence modes: constant along T).
    """
    assert prox_logp.shape == behav_logp.shape == mask.shape
    log_rho = (prox_logp - behav_logp) * mask  # [B, T]
    if mode.startswith("sequence"):
        log_rho = log_rho.sum(-1, keepdim=True).expand_as(mask)
    rho = torch.exp(log_rho)
    if mode.endswith("truncate"):
        return torch.clamp(rho, min=clip_min, max=clip_max)
    if mode.endswith("mask"):
        low = -math.inf if clip_min is None else clip_min
        high = math.inf if clip_max is None else clip_max
        return rho.masked_fill((rho < low) | (rho > high), 0.0)
    raise KeyError(
        f"unknown is_mode {mode!r}; the modes are: {', '.join(IS_MODES[1:])}"
    )


def off_policy_sequence_mask(
    adv: Tensor, logp: Tensor, behav_logp: Tensor, mask: Tensor, delta: float
) -> Tensor:
    """DeepSeek-V3.2's off-policy sequence mask (arXiv 2512.02556, eq. 9): drop a response when its
    advantage is negative and it has drifted: (1/|y|) Σ_t log(π_behav/π_θ) > δ.

    Positive-advantage responses are always kept: pushing up a token the sampler liked is safe, pushing
    down one the current policy already avoids is what destabilises. As TRL's `off_policy_mask_threshold`
    (which uses the sampler's log-probs, so it sees both staleness and precision mismatch).
    Args: adv, logp (detached), behav_logp, mask [B, T]; δ >= 0. Returns: keep [B, 1] float.
    """
    drift = ((behav_logp - logp.detach()) * mask).sum(-1, keepdim=True) / mask.sum(
        -1, keepdim=True
    ).clamp(min=1.0)  # [B, 1]
    negative = (adv * mask).sum(-1, keepdim=True) < 0
    return (~negative | (drift <= delta)).to(mask.dtype)


def m2_keep(log_ratio: Tensor, adv: Tensor, mask: Tensor, threshold: float) -> Tensor:
    """M2PO's mask (arXiv 2510.01161, Algorithm 1): drop tokens with the largest (log r)², largest first, until
    the mean of (log r)² over the kept tokens (the batch's second moment M2) is at most `threshold`.

    Only tokens that PPO's clip could act on are candidates, (A > 0, r > 1) or (A < 0, r < 1), as in the
    paper. A bound on the batch, not on each token: most tokens stay, and only the outliers that would
    dominate the update go. Args: log_ratio (detached), adv, mask [B, T]. Returns: keep [B, T] bool.
    """
    sq = log_ratio.detach() ** 2  # [B, T]
    valid = mask > 0
    candidate = valid & (((adv > 0) & (log_ratio > 0)) | ((adv < 0) & (log_ratio < 0)))
    n, total = int(valid.sum()), float((sq * valid).sum())
    order = sq.masked_fill(~candidate, -1.0).flatten().argsort(descending=True)
    drops = sq.flatten()[order][: int(candidate.sum())]  # candidates, largest first
    # after dropping the j largest candidates: M2 = (total - their sum) / (n - j)
    removed = torch.cat([drops.new_zeros(1), drops.cumsum(0)])
    left = torch.arange(n, n - len(drops) - 1, -1, device=sq.device).clamp(min=1)
    ok = ((total - removed) / left <= threshold).nonzero()
    n_drop = int(ok[0]) if len(ok) else len(drops)
    keep = valid.flatten().clone()
    keep[order[:n_drop]] = False
    return keep.view_as(mask)


def effective_sample_size(weight: Tensor, mask: Tensor) -> Tensor:
    """(Σw)²/(n·Σw²) over the n valid tokens: 1 when every weight is equal, 1/n when one dominates."""
    w = weight[mask > 0]
    return w.sum() ** 2 / (w.numel() * (w**2).sum()).clamp(min=1e-30)
