"""Every metric the lab logs, defined once: `GLOSSARY` (rendered as the book's glossary page) and the
pure reductions that turn a step's tensors into floats.

Token-level metrics average over the valid tokens (mask = 1) of the batch or minibatch they describe.
Per-update metrics are logged both as the mean over a step's updates and per update index, as
`name@u0`, `name@u1`, ... (update index = epoch · minibatches + minibatch).
"""

from __future__ import annotations

from dataclasses import fields

import torch
from torch import Tensor

from xxpo_lab.batch import Batch
from xxpo_lab.losses import LossInfo
from xxpo_lab.mismatch import effective_sample_size

GLOSSARY = {
    "step": "Training step (one batch of P·G sampled responses).",
    "samples": "Responses sampled so far, this step's batch included, and those dynamic sampling threw away.",
    "reward/mean": "Mean reward of the step's responses (after overlong shaping; 1 correct, 0 wrong).",
    "reward/correct_frac": "Share of the step's responses that are correct (training accuracy, sampled).",
    "eval/accuracy": "Share of held-out prompts answered correctly, one sample each at the training temperature.",
    "eval/len_mean": "Mean response length on the held-out prompts (tokens, EOS included).",
    "eval/samples": "Responses sampled to train the evaluated policy: the samples before this row's step (x-axis for sample efficiency).",
    "len/mean": "Mean response length of the step (tokens, EOS included).",
    "len/correct_mean": "Mean length of the correct responses of the step.",
    "len/incorrect_mean": "Mean length of the incorrect responses of the step.",
    "len/truncated_frac": "Share of responses without EOS within T_max (they score 0).",
    "len/truncated_right_frac": "Share of the truncated responses whose answer, written before the cut, is right: "
                                "plain truncation scores them 0 all the same (DAPO's reward noise).",
    "adv/zero_std_frac": "Share of groups whose rewards are all equal: their group advantages are 0 (TRL's frac_reward_zero_std).",
    "adv/abs_mean": "Mean |A| over valid tokens: how much push the step carries.",
    "groups/correct": "Share of the step's groups with exactly j correct responses, one column per j (groups/correct@j).",
    "data/kept_frac": "Dynamic sampling: share of sampled groups kept (groups with mixed rewards).",
    "clip/active_frac": "Share of tokens whose gradient the clip zeroed: (A>0, r>1+eps_high) or (A<0, r<1-eps_low). "
                        "verl's pg_clipfrac, TRL's clip_ratio/region_mean. For losses without a clip (pg): the share PPO's clip would zero.",
    "clip/low_frac": "Share of tokens clipped on the low side: A<0 and r<1-eps_low (TRL's clip_ratio/low_mean).",
    "clip/high_frac": "Share of tokens clipped on the high side: A>0 and r>1+eps_high (TRL's clip_ratio/high_mean).",
    "clip/high_prob": "Mean probability under the anchor π_prox (the sampler, on-policy) of the tokens clipped on the high "
                      "side; absent when none was. DAPO's Fig. 3a: the upper clip blocks the unlikely tokens (r ≤ 1/π_prox).",
    "prob/mean": "Mean probability under the anchor π_prox (the sampler, on-policy) of the sampled tokens: what "
                 "clip/high_prob compares with.",
    "clip/out_of_band_frac": "Share of tokens with r outside [1-eps_low, 1+eps_high], whatever the sign of A (CleanRL's clipfrac); "
                             "an upper bound on clip/active_frac.",
    "clip/dual_frac": "Share of tokens whose loss dual clip capped at -c·A (A<0, r>c).",
    "clip/seq_active_frac": "Share of sequences with at least one clipped token (for GSPO: sequences clipped).",
    "ratio/mean": "Mean of the ratio the surrogate acts on (token ratio, or GSPO's sequence ratio).",
    "ratio/std": "Standard deviation of that ratio over tokens.",
    "ratio/min": "Smallest ratio of the step.",
    "ratio/max": "Largest ratio of the step.",
    "ratio/ess": "Effective sample size of the ratios as importance weights, (Σw)²/Σw², divided by the number of tokens (1 is on-policy).",
    "ratio/logr_seq_std": "Spread of log π_θ/π_prox within a response: its standard deviation over the response's tokens, "
                          "averaged over responses with 2+ tokens. GSPO's sequence ratio averages it away (ch. 5).",
    "moe/route_drift": "Mixture-of-experts policies: share of (response token, layer) pairs whose chosen experts differ "
                       "from those chosen when the batch was sampled. At update index 1 (@u1): after one gradient step.",
    "kl/k1": "Drift of the current policy from the sampler, mean of log π_behav - log π_θ over the sampled tokens (can be < 0).",
    "kl/k3": "Drift from the sampler, mean of r - 1 - log r with r = π_θ/π_behav (≥ 0, low variance).",
    "kl/prox_k3": "The same k3 drift against the proximal policy π_prox (differs from kl/k3 only with stale data).",
    "kl/ref_k3": "k3 estimate of KL(π_θ‖π_ref) to the frozen reference on the sampled tokens (when beta > 0).",
    "entropy/mean": "Mean entropy (nats) of the policy's next-token distribution on the sampled responses.",
    "prox/approx_err": "A-3PO with measure_prox: mean |log π̂_prox - log π_prox| over the tokens, the interpolated anchor "
                       "against the exact one (the policy at the start of the step, what decoupled PPO recomputes).",
    "prox/sandwich_frac": "A-3PO with measure_prox: share of tokens whose exact log π_prox lies between log π_behav and "
                          "log π_θ, where any interpolation between them can put it (ch. 7).",
    "is/weight_max": "Decoupled PPO / A-3PO: largest behaviour weight π_prox/π_behav.",
    "is/masked_frac": "Decoupled PPO / A-3PO: share of tokens masked by behav_weight_cap. M2PO: share masked by its "
                      "second-moment bound.",
    "is/masked_neg_frac": "Decoupled PPO / A-3PO with behav_weight_cap: share of the masked tokens whose advantage is "
                          "negative (tokens of worse-than-average responses); absent when none was masked (ch. 6).",
    "is/capped_frac": "CISPO: share of tokens whose IS weight hit a bound (they keep their gradient). DPPO: share with "
                      "r above its truncation 20.",
    "is/zeroed_frac": "Mismatch correction (is_mode, mask modes): share of tokens whose weight π_prox/π_behav left the "
                      "band [is_clip_min, is_clip_max], so their loss is dropped (for sequence modes: whole responses).",
    "is/truncated_frac": "Mismatch correction (truncate modes): share of tokens whose weight was cut to a bound.",
    "is/weight_mean": "Mismatch correction: mean weight on the tokens' loss (1 when sampler and trainer agree).",
    "is/ess": "Mismatch correction: effective sample size of the weights, (Σw)²/(n·Σw²) over the n tokens (1: equal weights).",
    "mismatch/abs_gap": "Sampler vs trainer: mean |log π_prox - log π_behav| per token, the trainer's log-prob of the sampled "
                        "token against the sampler's (only when the trainer recomputes π_prox; staleness adds to it).",
    "mismatch/max_gap": "Sampler vs trainer: largest |log π_prox - log π_behav| of the step's tokens.",
    "mismatch/seq_abs_gap": "Sampler vs trainer: mean over responses of |Σ_t (log π_prox - log π_behav)|, the log of the "
                            "sequence ratio the sequence modes use.",
    "opm/masked_frac": "DeepSeek-V3.2 off-policy sequence mask: share of responses dropped at an update (A < 0 and mean "
                       "log π_behav/π_θ per token above off_policy_mask).",
    "phi/mean": "VESPO: mean Gamma weight φ(W) over tokens (1 on-policy).",
    "phi/low_frac": "VESPO: share of tokens whose response's weight φ(W) is below 0.5.",
    "gate/mean": "SAPO: mean gradient weight of the soft gate (1 on-policy).",
    "gate/low_frac": "SAPO: share of tokens whose gate weight is below 0.5.",
    "loss/policy": "Policy loss (mean over the step's updates). Not a measure of progress: it starts near 0 on-policy.",
    "loss/value": "Critic loss (PPO's clipped value loss or SPPO's BCE).",
    "value/clip_frac": "Share of tokens where PPO's value clipping was the larger loss.",
    "value/explained_var": "Explained variance of the critic's values against its targets, at sampling time (1 perfect, 0 constant).",
    "grad/norm": "Policy gradient norm before clipping (mean over updates).",
    "grad/mean_norm": "Gradient statistics: norm of the mean gradient ‖ḡ‖ over M = grad_stats_batches fresh batches at fixed parameters.",
    "grad/var": "Gradient statistics: total variance (1/(M-1)) Σ_m ‖g_m - ḡ‖² of the per-batch gradient.",
    "grad/snr": "Gradient statistics: signal-to-noise ratio ‖E g‖² / grad/var, debiased: (‖ḡ‖² - grad/var/M) / grad/var.",
    "grad/snr_se": "Gradient statistics: standard error of grad/snr (jackknife over the M batches).",
    "time/sample": "Seconds spent sampling the step's responses (and re-sampling for dynamic sampling).",
    "time/score": "Seconds spent decoding and verifying responses.",
    "time/prox": "Seconds spent on the extra forward pass for π_prox (decoupled PPO only; A-3PO has none).",
    "time/measure": "Seconds spent on measurement-only forward passes (measure_prox), left out of time/step.",
    "time/update": "Seconds spent on the step's gradient updates (policy and critic).",
    "time/step": "Seconds for the whole step, evaluation excluded.",
    "time/eval": "Seconds spent on the held-out evaluation logged in this row.",
    "time/elapsed": "Training seconds before this row's step (time/step summed; evaluation excluded), logged with each evaluation.",
    "mem/peak_mb": "Peak memory of the process so far: CUDA max allocated on GPU, resident set size on CPU (MB).",
    "mem/policy_params_mb": "Bytes of the policy's parameters (MB).",
    "mem/policy_optim_mb": "Bytes of the policy's optimizer state (MB).",
    "mem/critic_params_mb": "Bytes of the critic's parameters (MB); 0 without a critic.",
    "mem/critic_optim_mb": "Bytes of the critic's optimizer state (MB).",
}

PER_UPDATE = ("clip/active_frac", "clip/low_frac", "clip/high_frac", "clip/high_prob", "clip/out_of_band_frac", "kl/k3",
              "ratio/max", "ratio/logr_seq_std", "moe/route_drift",
              "prox/approx_err")
"""Update metrics also logged per update index, as name@u0, name@u1, ..."""


def _frac(flags: Tensor, mask: Tensor) -> float:
    return ((flags.float() * mask).sum() / mask.sum().clamp(min=1.0)).item()


def _mean(x: Tensor, mask: Tensor) -> float:
    return ((x * mask).sum() / mask.sum().clamp(min=1.0)).item()


def rollout_metrics(b: Batch, G: int) -> dict[str, float]:
    """Reward, accuracy, length (by correctness) and zero-signal groups of a scored batch."""
    lengths, correct = b.lengths.float(), b.correct.float()
    n_ok, n_bad = correct.sum(), (1 - correct).sum()
    groups = b.reward.view(-1, G)
    n_correct = b.correct.view(-1, G).sum(-1)  # [P] correct responses per group
    counts = {f"groups/correct@{j}": (n_correct == j).float().mean().item() for j in range(G + 1)}
    return counts | {
        "reward/mean": b.reward.mean().item(),
        "reward/correct_frac": correct.mean().item(),
        "len/mean": lengths.mean().item(),
        "len/correct_mean": ((lengths * correct).sum() / n_ok).item() if n_ok > 0 else float("nan"),
        "len/incorrect_mean": ((lengths * (1 - correct)).sum() / n_bad).item() if n_bad > 0 else float("nan"),
        "len/truncated_frac": b.truncated.float().mean().item(),
        "len/truncated_right_frac": (b.right_before_cut[b.truncated].float().mean().item()
                                     if b.right_before_cut is not None and b.truncated.any() else float("nan")),
        "adv/zero_std_frac": (groups.max(-1).values == groups.min(-1).values).float().mean().item(),
        "adv/abs_mean": _mean(b.adv.abs(), b.mask),
    }


def update_metrics(info: LossInfo, logp: Tensor, b: Batch, entropy: Tensor) -> dict[str, float]:
    """Entropy, the drift from the sampler and from the proximal policy, the anchor's probability of the sampled
    tokens and of those the upper clip blocked, and every field the loss reported."""
    m, logp = b.mask, logp.detach()
    p = (b.prox_logp if info.prox_logp is None else info.prox_logp).exp()
    out = {"entropy/mean": _mean(entropy.detach(), m), "kl/k1": _mean(b.behav_logp - logp, m),
           "kl/k3": _k3(logp, b.behav_logp, m), "kl/prox_k3": _k3(logp, b.prox_logp, m), "prob/mean": _mean(p, m),
           "ratio/logr_seq_std": seq_std(logp - b.prox_logp, m)}
    if info.clip_high is not None and (blocked := info.clip_high & (m > 0)).any():
        out["clip/high_prob"] = p[blocked].mean().item()
    if info.is_masked is not None and (dropped := info.is_masked & (m > 0)).any():
        out["is/masked_neg_frac"] = (b.adv[dropped] < 0).float().mean().item()
    if b.ref_logp is not None:
        out["kl/ref_k3"] = _k3(b.ref_logp, logp, m)
    return out | loss_metrics(info, logp, m)


def mismatch_metrics(b: Batch, is_clip_min: float | None, is_clip_max: float | None) -> dict[str, float]:
    """The gap between the trainer's π_prox and the sampler's log-probs on the step's tokens, when the trainer
    recomputed π_prox, and what the mismatch correction (is_mode) did with it. Book: ch. 10."""
    if b.prox_logp is b.behav_logp:
        return {}
    m = b.mask
    gap = (b.prox_logp - b.behav_logp) * m  # [B, T]
    out = {"mismatch/abs_gap": _mean(gap.abs(), m), "mismatch/max_gap": gap.abs().max().item(),
           "mismatch/seq_abs_gap": gap.sum(-1).abs().mean().item()}
    if b.is_weight is not None:
        w = b.is_weight
        at_bound = torch.zeros_like(m, dtype=torch.bool)
        for bound in (is_clip_min, is_clip_max):
            if bound is not None:
                at_bound |= w == bound
        out |= {"is/zeroed_frac": _frac(w == 0, m), "is/truncated_frac": _frac(at_bound, m),
                "is/weight_mean": _mean(w, m), "is/ess": effective_sample_size(w, m).item()}
    return out


def prox_error(approx: Tensor, exact: Tensor, behav_logp: Tensor, logp: Tensor, mask: Tensor) -> dict[str, float]:
    """How far an interpolated anchor is from the exact one, and whether the exact one lies between the sampler
    and the current policy (the interpolation's premise). All [B, T] log-probs -> floats. Book: ch. 7."""
    lo, hi = torch.minimum(behav_logp, logp.detach()), torch.maximum(behav_logp, logp.detach())
    return {"prox/approx_err": _mean((approx - exact).abs(), mask),
            "prox/sandwich_frac": _frac((exact >= lo) & (exact <= hi), mask)}


def seq_std(x: Tensor, mask: Tensor) -> float:
    """Mean over rows with 2+ valid entries of the (population) std of x over the row's valid entries. [B, T] -> float."""
    n = mask.sum(-1)  # [B]
    mean = (x * mask).sum(-1) / n.clamp(min=1.0)
    std = ((((x - mean[:, None]) * mask) ** 2).sum(-1) / n.clamp(min=1.0)).sqrt()
    rows = n >= 2
    return std[rows].mean().item() if rows.any() else float("nan")


def loss_metrics(info: LossInfo, logp: Tensor, mask: Tensor) -> dict[str, float]:
    """Every field of a loss's LossInfo, reduced to the glossary's metrics (`LOSS_INFO_METRICS`)."""
    out = {}
    for f in fields(info):
        if getattr(info, f.name) is not None:
            out |= LOSS_INFO_METRICS[f.name](info, logp, mask)
    return out


def _k3(logp: Tensor, anchor_logp: Tensor, mask: Tensor) -> float:
    """Mean of r - 1 - log r with r = exp(logp - anchor_logp): the k3 estimate of KL(π‖anchor), ≥ 0."""
    log_r = logp - anchor_logp
    return _mean(torch.exp(log_r) - 1 - log_r, mask)


def _ratio_stats(info: LossInfo, logp: Tensor, m: Tensor) -> dict[str, float]:
    r = info.ratio[m > 0]
    return {"ratio/mean": r.mean().item(), "ratio/std": r.std().item() if r.numel() > 1 else 0.0,
            "ratio/min": r.min().item(), "ratio/max": r.max().item(),
            "ratio/ess": (r.sum() ** 2 / (r ** 2).sum() / r.numel()).item()}


def _clip_stats(info: LossInfo, logp: Tensor, m: Tensor) -> dict[str, float]:
    active = info.clip_low | info.clip_high  # LossInfo guarantees both
    return {"clip/active_frac": _frac(active, m), "clip/low_frac": _frac(info.clip_low, m),
            "clip/seq_active_frac": (active & (m > 0)).any(-1).float().mean().item()}


LOSS_INFO_METRICS = {
    "ratio": _ratio_stats,
    "clip_low": _clip_stats,
    "clip_high": lambda info, logp, m: {"clip/high_frac": _frac(info.clip_high, m)},
    "out_of_band": lambda info, logp, m: {"clip/out_of_band_frac": _frac(info.out_of_band, m)},
    "dual_clip": lambda info, logp, m: {"clip/dual_frac": _frac(info.dual_clip, m)},
    "is_weight": lambda info, logp, m: {"is/weight_max": info.is_weight[m > 0].max().item()},
    "is_masked": lambda info, logp, m: {"is/masked_frac": _frac(info.is_masked, m)},
    "is_capped": lambda info, logp, m: {"is/capped_frac": _frac(info.is_capped, m)},
    "gate": lambda info, logp, m: {"gate/mean": _mean(info.gate, m), "gate/low_frac": _frac(info.gate < 0.5, m)},
    "prox_logp": lambda info, logp, m: {"kl/prox_k3": _k3(logp, info.prox_logp, m)},  # replaces the batch's anchor
    "phi": lambda info, logp, m: {"phi/mean": _mean(info.phi, m), "phi/low_frac": _frac(info.phi < 0.5, m)},
}
"""How each field of LossInfo becomes metrics: (info, detached logp, mask) -> {glossary name: float}. A test
checks that every field has an entry and every name is in GLOSSARY, so nothing a loss reports is dropped."""


def grad_moments(grads: Tensor) -> dict[str, float]:
    """Mean-gradient norm, total variance and SNR (with a standard error) of M gradients at fixed parameters.

    grads [M, D]: flattened gradients of M independent batches. var = (1/(M-1)) Σ‖g_m - ḡ‖² (the trace of
    the covariance of one batch's gradient). ‖ḡ‖² overestimates ‖E g‖² by var/M, so the SNR is
    debiased: snr = (‖ḡ‖² - var/M) / var, an estimate of ‖E g‖² / var. Its standard error is the
    jackknife over the M batches. Only the SNR compares estimators whose advantages have different
    units (z-scored vs mean-centred). Book: ch. 2.
    """
    assert grads.dim() == 2 and grads.shape[0] >= 3, grads.shape
    M = grads.shape[0]

    def snr(g: Tensor) -> Tensor:
        k = g.shape[0]
        mean = g.mean(0)
        var = ((g - mean) ** 2).sum() / (k - 1)
        return (mean.pow(2).sum() - var / k) / var.clamp(min=1e-30), mean, var

    value, mean, var = snr(grads)
    leave_one_out = torch.stack([snr(torch.cat([grads[:i], grads[i + 1:]]))[0] for i in range(M)])
    se = ((M - 1) / M * ((leave_one_out - leave_one_out.mean()) ** 2).sum()).sqrt()
    return {"grad/mean_norm": mean.norm().item(), "grad/var": var.item(), "grad/snr": value.item(),
            "grad/snr_se": se.item()}


def explained_variance(values: Tensor, targets: Tensor, mask: Tensor) -> float:
    """1 - Var(target - V) / Var(target) over valid entries: 1 is a perfect critic, 0 no better than a constant."""
    n = mask.sum().clamp(min=1.0)
    t_mean = (targets * mask).sum() / n
    var_t = (((targets - t_mean) * mask) ** 2).sum() / n
    err = (targets - values) * mask
    var_err = (((err - err.sum() / n) * mask) ** 2).sum() / n
    return (1.0 - var_err / var_t.clamp(min=1e-8)).item()


def reduce_updates(per_update: list[dict[str, float]]) -> dict[str, float]:
    """A step's row from its updates: the mean of each metric, plus PER_UPDATE metrics by update index."""
    keys = sorted({k for d in per_update for k in d})
    row = {k: sum(d[k] for d in per_update if k in d) / sum(k in d for d in per_update) for k in keys}
    for i, d in enumerate(per_update):
        row |= {f"{k}@u{i}": d[k] for k in PER_UPDATE if k in d}
    return row


def param_mb(module) -> float:
    return sum(p.numel() * p.element_size() for p in module.parameters()) / 2**20


def optim_mb(opt) -> float:
    return sum(t.numel() * t.element_size() for s in opt.state.values() for t in s.values()
               if isinstance(t, torch.Tensor)) / 2**20
