"""The sampler/trainer mismatch (ch. 10): the sampler's precision and filters, the corrections' golden values,
DPPO against verl's definitions, M2PO's mask, and the bad inputs. TRL parity of the corrections and of VESPO is
in test_trl_parity.py."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from xxpo_lab import GLOSSARY, Config, ConfigError, NonFiniteError, train
from xxpo_lab.batch import Batch
from xxpo_lab.config import resolve
from xxpo_lab.losses import LOSSES
from xxpo_lab.mismatch import filter_logp, fp8_round, is_weight, m2_keep, supported_sampler_dtypes


def test_top_k_and_top_p_keep_the_right_tokens_and_renormalise():
    p = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    logp = p.log()
    # top-k 2: {0.5, 0.3}, mass 0.8 -> 0.625, 0.375
    torch.testing.assert_close(filter_logp(logp, 1.0, 2).exp(), torch.tensor([[0.625, 0.375, 0.0, 0.0]]))
    # top-p 0.8: 0.5 alone is below 0.8, 0.5 + 0.3 reaches it: the same two tokens
    torch.testing.assert_close(filter_logp(logp, 0.8, 0).exp(), torch.tensor([[0.625, 0.375, 0.0, 0.0]]))
    # top-p 0.81: the third token is needed (0.8 < 0.81): mass 0.95
    kept = filter_logp(logp, 0.81, 0)
    torch.testing.assert_close(kept.exp(), torch.tensor([[0.5, 0.3, 0.15, 0.0]]) / 0.95)
    # the gap of a kept token is exactly -log(kept mass), whatever the token
    torch.testing.assert_close(kept[0, :3] - logp[0, :3], torch.full((3,), -math.log(0.95)))
    # top-p 0.3: the most likely token alone (it crosses the threshold); filters off: unchanged
    torch.testing.assert_close(filter_logp(logp, 0.3, 0).exp(), torch.tensor([[1.0, 0.0, 0.0, 0.0]]))
    assert filter_logp(logp, 1.0, 0) is logp


def test_fp8_rounding_keeps_three_mantissa_bits():
    w = torch.randn(64, 64, generator=torch.Generator().manual_seed(0))
    q = fp8_round(w)
    assert not torch.equal(q, w)
    big = w.abs() > w.abs().max() / 64  # normal range of e4m3 after scaling: relative error <= 2^-4
    assert ((q - w).abs()[big] <= w.abs()[big] / 16 + 1e-7).all()
    assert float(q.abs().max()) == pytest.approx(float(w.abs().max()), rel=1e-6)  # the largest weight maps to 448 exactly


def test_is_weight_golden():
    # two responses: log ρ per token [0.1, -0.2 | 1.0, pad]
    prox = torch.tensor([[0.1, -0.2], [1.0, 0.0]])
    behav = torch.zeros(2, 2)
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    e = math.exp
    tok = is_weight(prox, behav, mask, "token_truncate", None, 2.0)
    torch.testing.assert_close(tok, torch.tensor([[e(0.1), e(-0.2)], [2.0, 1.0]]))  # e^1 = 2.72 cut to 2
    tok_mask = is_weight(prox, behav, mask, "token_mask", 0.9, 2.0)
    torch.testing.assert_close(tok_mask, torch.tensor([[e(0.1), 0.0], [0.0, 1.0]]))  # e^-0.2 = 0.82 < 0.9
    seq = is_weight(prox, behav, mask, "sequence_truncate", None, 2.0)  # products e^-0.1 and e^1
    torch.testing.assert_close(seq, torch.tensor([[e(-0.1), e(-0.1)], [2.0, 2.0]]))
    seq_mask = is_weight(prox, behav, mask, "sequence_mask", None, 2.0)
    torch.testing.assert_close(seq_mask, torch.tensor([[e(-0.1), e(-0.1)], [0.0, 0.0]]))


def test_m2_keep_drops_the_fewest_largest_candidates():
    # log r of 5 valid tokens (the last column of row 1 is padding); all A > 0, so r > 1 tokens are candidates
    log_r = torch.tensor([[0.5, 0.1, -0.4], [0.2, 0.05, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    adv = torch.ones(2, 3)
    # squares 0.25, 0.01, 0.16, 0.04, 0.0025: mean 0.0925. Drop 0.25 (a candidate): (0.2125 - 0.25 + ...) =
    # (0.4625 - 0.25) / 4 = 0.053 > 0.04; -0.4 is not a candidate (A > 0, r < 1), so drop 0.2 next:
    # (0.2125 - 0.04) / 3 = 0.0575 > 0.04, then 0.1: (0.1725 - 0.01) / 2 = 0.081, then 0.05: 0.16 / 1. Never
    # below 0.04 with the non-candidate left: every candidate goes.
    keep = m2_keep(log_r, adv, mask, 0.04)
    torch.testing.assert_close(keep, torch.tensor([[False, False, True], [False, False, False]]))
    # a looser bound: dropping 0.5 alone gives 0.053 <= 0.06
    keep = m2_keep(log_r, adv, mask, 0.06)
    torch.testing.assert_close(keep, torch.tensor([[False, True, True], [True, True, False]]))
    # already within the bound: nothing dropped
    assert m2_keep(log_r, adv, mask, 0.1).sum() == 5


def verl_dppo(kind: str, old_log_prob, log_prob, advantages, response_mask, clip_low, clip_high, clip_c=20.0):
    """verl's `compute_policy_loss_dppo_tv` / `_dppo_kl` (verl core_algos.py, Feb 2026, PR #5397), written
    out line by line with its token-mean `agg_loss`: the masks, the detached truncated ratio, the clamp
    of the log-ratio at ±20 and the 1e-8 in the binary KL."""
    negative_approx_kl = torch.clamp(log_prob - old_log_prob, min=-20.0, max=20.0)
    ratio = torch.exp(negative_approx_kl)
    truncated_ratio = torch.clamp(ratio, max=clip_c).detach()
    prob, old_prob = torch.exp(log_prob), torch.exp(old_log_prob)
    if kind == "tv":
        valid_pos = (prob - old_prob) <= clip_high
        valid_neg = (prob - old_prob) >= -clip_low
    else:
        binary_kl = old_prob * (old_log_prob - log_prob) + (1 - old_prob) * torch.log(
            (1.0 - old_prob + 1e-8) / (1.0 - prob + 1e-8))
        valid_pos = (binary_kl <= clip_high) | (prob <= old_prob)
        valid_neg = (binary_kl <= clip_low) | (prob >= old_prob)
    valid = torch.where(advantages > 0, valid_pos, valid_neg).detach().float()
    pg_losses = -advantages * truncated_ratio * log_prob * valid
    return (pg_losses * response_mask).sum() / (response_mask.sum() + 1e-8)


@pytest.mark.parametrize("kind,eps", [("tv", 0.15), ("kl", 0.05), ("tv", 0.05)])
def test_dppo_equals_verls_definition(kind, eps):
    gen = torch.Generator().manual_seed(0)
    B, T = 6, 5
    mask = (torch.arange(T)[None] < torch.tensor([5, 3, 1, 4, 5, 2])[:, None]).double()
    prox = torch.log(torch.rand(B, T, generator=gen, dtype=torch.float64) * 0.98 + 0.01)
    logp0 = prox + 0.6 * torch.randn(B, T, generator=gen, dtype=torch.float64)
    logp0 = torch.minimum(logp0, torch.full_like(logp0, -1e-3))  # probabilities below 1
    adv = torch.tensor([1.0, -1.0, 0.5, -0.5, 2.0, -2.0], dtype=torch.float64)[:, None] * mask
    b = Batch.of(mask, adv=adv, prox_logp=prox, behav_logp=prox)
    cfg = Config(loss=f"dppo_{kind}", eps_low=eps, eps_high=eps)
    logp = logp0.clone().requires_grad_(True)
    loss, info = LOSSES[f"dppo_{kind}"].fn(logp, b, cfg)
    (grad,) = torch.autograd.grad(loss, logp)
    ref_logp = logp0.clone().requires_grad_(True)
    ref = verl_dppo(kind, prox, ref_logp, adv, mask, eps, eps)
    (ref_grad,) = torch.autograd.grad(ref, ref_logp)
    torch.testing.assert_close(loss.detach(), ref.detach(), rtol=1e-7, atol=1e-12)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-7, atol=1e-12)
    m = mask.bool()
    assert (info.clip_high & m).any() and (info.clip_low & m).any()  # both sides of the region bind here
    stopped = info.clip_high | info.clip_low
    assert (grad[stopped & m] == 0).all() and (grad[~stopped & m & (adv != 0)] != 0).all()  # flags = zero gradient
    assert ((~info.clip_low & ~info.clip_high) & m).any()


def test_dppo_tv_lets_a_rare_token_grow_where_the_ratio_clip_stops_it():
    # p_prox = 0.001 -> 0.01 (r = 10, moved 0.009) and p_prox = 0.95 -> 0.78 (r = 0.82, moved -0.17); A = +1, -1
    prox = torch.tensor([[math.log(0.001), math.log(0.95)]])
    logp = torch.tensor([[math.log(0.01), math.log(0.78)]])
    b = Batch.of(torch.ones(1, 2), adv=torch.tensor([[1.0, -1.0]]), prox_logp=prox, behav_logp=prox)
    _, tv = LOSSES["dppo_tv"].fn(logp, b, resolve(Config(loss="dppo_tv")))
    _, ppo = LOSSES["grpo"].fn(logp, b, resolve(Config(loss="grpo")))
    assert ppo.clip_high[0, 0] and not tv.clip_high[0, 0]  # the ratio clip stops the rare token, TV does not
    assert not ppo.clip_low[0, 1] and tv.clip_low[0, 1]  # r = 0.82 is inside the ratio band; a drop of 0.17 is not


# -------------------------------------------------------------------------------------------------
# the sampler in the loop


def test_a_bfloat16_sampler_records_its_own_log_probs(tiny):
    hist = train(replace(tiny, sampler_dtype="bfloat16", prox_source="trainer"), progress=False, cache=False)
    gap = hist["mismatch/abs_gap"].dropna()
    assert len(gap) == tiny.steps and (gap > 0).all() and (gap < 0.05).all()  # real, and small
    exact = train(replace(tiny, prox_source="trainer"), progress=False, cache=False)
    assert (exact["mismatch/abs_gap"].dropna() < 1e-5).all()  # a float32 sampler agrees with the trainer


def test_top_p_gap_is_minus_log_kept_mass_and_every_option_logs_glossary_metrics(tiny):
    runs = [train(replace(tiny, top_p=0.8, prox_source="trainer", is_mode=mode, is_clip_min=0.5, is_clip_max=2.0,
                          off_policy_mask=0.05), progress=False, cache=False)
            for mode in ("token_truncate", "sequence_mask")]
    runs += [train(replace(tiny, loss=loss, staleness=1, sampler_dtype="float8"), progress=False, cache=False)
             for loss in ("dppo_tv", "dppo_kl", "vespo", "m2po")]
    for h in runs:
        missing = {c.split("@")[0] for c in h.columns} - set(GLOSSARY)
        assert not missing, f"metrics without a glossary entry: {sorted(missing)}"
    h = runs[0]
    assert (h["mismatch/abs_gap"].dropna() > 0.01).all()  # -log S > 0 on every token the filter touched
    assert (h["mismatch/max_gap"].dropna() <= -math.log(0.8) + 1e-4).all()  # S >= top_p bounds the gap
    assert h["opm/masked_frac"].notna().any() and h["is/weight_mean"].dropna().lt(1.0).all()


@pytest.mark.parametrize("changes,field,says", [
    ({"is_mode": "token_truncate"}, "is_mode", "needs prox_source='trainer'"),
    ({"is_mode": "token_mask", "prox_source": "trainer", "loss": "decoupled_ppo"}, "is_mode", "weights its tokens"),
    ({"is_mode": "token_mask", "prox_source": "trainer", "loss": "vespo"}, "is_mode", "weights its tokens"),
    ({"is_mode": "token_mask", "prox_source": "trainer", "is_clip_min": 2.0, "is_clip_max": 1.5}, "is_clip_min",
     "must be < is_clip_max = 1.5"),
    ({"is_mode": "token_mask", "prox_source": "trainer", "is_clip_min": 1.2}, "is_clip_min",
     "must leave 1 inside the band"),
    ({"is_mode": "sequence_truncate", "prox_source": "trainer", "is_clip_max": 0.9}, "is_clip_max", "must be > 1"),
    ({"off_policy_mask": 0.1, "loss": "self_play_po"}, "off_policy_mask", "not linear in the advantage"),
    ({"top_p": 1.2}, "top_p", "must be in (0, 1]"),
])
def test_bad_mismatch_settings_fail_at_config_time(changes, field, says):
    with pytest.raises(ConfigError, match=rf"^Config\.{field} = .* is not allowed: .*{_re(says)}"):
        Config(**changes)


def _re(text: str) -> str:
    import re

    return re.escape(text)


def test_a_sampler_dtype_the_device_lacks_fails_at_setup(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert "bfloat16" not in supported_sampler_dtypes(torch.device("cuda"))
    assert supported_sampler_dtypes(torch.device("cpu")) == ("float32", "bfloat16", "float16", "float8")
    from xxpo_lab import loop

    monkeypatch.setattr(loop, "supported_sampler_dtypes", lambda device: ("float32", "float16", "float8"))
    with pytest.raises(ConfigError, match=r"sampler_dtype = 'bfloat16' is not supported on cpu: the supported ones "
                                          r"there are float32, float16, float8"):
        loop.setup(resolve(Config(sampler_dtype="bfloat16")), torch.device("cpu"))


def test_a_non_finite_sampler_log_prob_stops_the_run_with_the_metric(tiny, monkeypatch):
    from xxpo_lab import loop

    real = loop.sample

    def broken(*args, **kwargs):
        resp, mask, logp, lengths, truncated = real(*args, **kwargs)
        logp[0, 0] = float("nan")
        return resp, mask, logp, lengths, truncated

    monkeypatch.setattr(loop, "sample", broken)
    with pytest.raises(NonFiniteError, match=r"mismatch/abs_gap: the sampler \(float16\) recorded a non-finite"):
        train(replace(tiny, sampler_dtype="float16", prox_source="trainer"), progress=False, cache=False)


@pytest.mark.parametrize("p_prox", [0.001, 0.05, 0.5, 0.95])
def test_trust_regions_read_off_the_losses_match_their_formulas(p_prox):
    from xxpo_lab.explorer import P_GRID, trust_region

    step = lambda p: np.diff(P_GRID)[np.searchsorted(P_GRID, p) - 1] * 1.01  # noqa: E731 the grid's spacing there
    lo, hi = trust_region("grpo", p_prox)  # ratio clip 0.2: p_prox·0.8 .. p_prox·1.2 (capped at 1)
    assert abs(lo - 0.8 * p_prox) <= step(0.8 * p_prox)
    assert (hi == 1.0) if 1.2 * p_prox >= 1 else abs(hi - 1.2 * p_prox) <= step(1.2 * p_prox)
    lo, hi = trust_region("dppo_tv", p_prox)  # TV 0.15: p_prox ± 0.15, within (0, 1)
    assert (lo == 0.0) if p_prox < 0.15 else abs(lo - (p_prox - 0.15)) <= step(p_prox - 0.15)
    assert (hi == 1.0) if p_prox > 0.85 else abs(hi - (p_prox + 0.15)) <= step(p_prox + 0.15)
    lo, hi = trust_region("dppo_kl", p_prox)  # where the binary KL reaches 0.05
    kl = lambda p: p_prox * math.log(p_prox / p) + (1 - p_prox) * math.log((1 - p_prox) / (1 - p))  # noqa: E731
    assert kl(hi) >= 0.05 and kl(hi - step(hi)) < 0.05
    if lo > 0:
        assert kl(lo) >= 0.05 and kl(lo + step(lo)) < 0.05


def test_sampler_gap_is_the_kept_mass_for_top_p_and_zero_for_an_exact_sampler(tiny):
    from xxpo_lab.measure import sampler_gap

    exact = sampler_gap(tiny, seed=0, n_prompts=8)
    assert exact["gap"].abs().max() < 1e-5 and len(exact) > 8
    nucleus = sampler_gap(tiny, seed=0, n_prompts=8, top_p=0.7)
    assert (nucleus["gap"] <= 1e-6).all() and (nucleus["gap"] >= math.log(0.7) - 1e-5).all()  # -log S in [0, -log 0.7]
    assert (nucleus["gap"] < -1e-3).any()
    half = sampler_gap(tiny, seed=0, n_prompts=8, sampler_dtype="bfloat16")
    assert 0 < half["gap"].abs().mean() < 0.05
