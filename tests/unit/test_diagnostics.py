"""Diagnostics: each reduction against hand-computed values; the gradient statistics in a run."""

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from xxpo_lab import GLOSSARY, train
from xxpo_lab.batch import Batch
from xxpo_lab.diagnostics import explained_variance, grad_moments, reduce_updates, rollout_metrics, update_metrics
from xxpo_lab.losses import LossInfo


def _batch(reward, lengths, T=4):
    B = len(reward)
    mask = (torch.arange(T)[None] < torch.tensor(lengths)[:, None]).float()
    return Batch(prompt_ids=torch.zeros(B, 1, dtype=torch.long), prompt_mask=torch.ones(B, 1, dtype=torch.long),
                 resp_ids=torch.zeros(B, T, dtype=torch.long), mask=mask, behav_logp=torch.zeros(B, T),
                 lengths=torch.tensor(lengths), truncated=torch.tensor(lengths) == T,
                 version=torch.zeros(B, dtype=torch.long), reward=torch.tensor(reward),
                 correct=torch.tensor(reward) > 0, adv=mask * 0.5, prox_logp=torch.zeros(B, T))


def test_rollout_metrics_split_length_by_correctness():
    # two groups of 2: (1, 0) has signal, (0, 0) has none
    m = rollout_metrics(_batch([1.0, 0.0, 0.0, 0.0], [2, 3, 4, 1]), G=2)
    assert m["reward/mean"] == 0.25 and m["reward/correct_frac"] == 0.25
    assert m["len/correct_mean"] == 2 and m["len/incorrect_mean"] == pytest.approx((3 + 4 + 1) / 3)
    assert m["len/truncated_frac"] == 0.25  # the length-4 response hit T = 4
    assert m["adv/zero_std_frac"] == 0.5
    assert m["len/truncated_right_frac"] != m["len/truncated_right_frac"]  # no field set: NaN, never a made-up 0


def test_truncated_right_frac_is_over_the_truncated_responses_only():
    b = _batch([0.0, 0.0, 0.0, 1.0], [4, 4, 4, 2])  # three truncated (length T = 4), all scored 0
    b.right_before_cut = torch.tensor([True, False, False, False])
    assert rollout_metrics(b, G=2)["len/truncated_right_frac"] == pytest.approx(1 / 3)
    b.lengths = torch.tensor([1, 2, 3, 2])
    b.truncated = torch.zeros(4, dtype=torch.bool)
    m = rollout_metrics(b, G=2)
    assert m["len/truncated_right_frac"] != m["len/truncated_right_frac"]  # nothing truncated: NaN


def test_update_metrics_clip_fractions_and_drift():
    b = _batch([1.0, 0.0], [2, 2], T=2)
    ratio = torch.tensor([[1.5, 1.0], [0.5, 1.0]])
    b.adv = torch.tensor([[1.0, 1.0], [-1.0, 1.0]])
    logp = ratio.log()  # behav_logp = 0, so r = exp(logp)
    info = LossInfo(ratio=ratio, clip_low=torch.tensor([[False, False], [True, False]]),
                    clip_high=torch.tensor([[True, False], [False, False]]),
                    out_of_band=torch.tensor([[True, False], [True, False]]))
    m = update_metrics(info, logp, b, entropy=torch.ones(2, 2))
    assert m["clip/active_frac"] == 0.5 and m["clip/low_frac"] == 0.25 and m["clip/high_frac"] == 0.25
    assert m["clip/out_of_band_frac"] == 0.5 and m["clip/seq_active_frac"] == 1.0
    # k1 = mean(-log r) = -(log 1.5 + log 0.5) / 4; k3 = mean(r - 1 - log r)
    assert m["kl/k1"] == pytest.approx(-(torch.tensor(1.5).log() + torch.tensor(0.5).log()).item() / 4)
    assert m["kl/k3"] == pytest.approx(((1.5 - 1 - torch.tensor(1.5).log()) + (0.5 - 1 - torch.tensor(0.5).log())).item() / 4)
    assert m["ratio/max"] == 1.5 and m["entropy/mean"] == 1.0
    assert m["ratio/ess"] == pytest.approx(4.0**2 / (1.5**2 + 0.5**2 + 2) / 4)


def test_the_share_of_masked_tokens_with_a_negative_advantage():
    # three masked tokens, two with A < 0 (-0.5, -1.0) and one with A > 0 (0.5): 2/3; padding never counts
    b = _batch([1.0, 0.0], [3, 2], T=3)
    b.adv = torch.tensor([[0.5, -0.5, 0.5], [-1.0, 0.5, -2.0]]) * b.mask
    masked = torch.tensor([[True, True, False], [True, False, True]])  # (1, 2) is padding
    info = LossInfo(ratio=torch.ones(2, 3), is_masked=masked)
    assert update_metrics(info, torch.zeros(2, 3), b, torch.ones(2, 3))["is/masked_neg_frac"] == pytest.approx(2 / 3)
    none = LossInfo(ratio=torch.ones(2, 3), is_masked=masked & False)
    assert "is/masked_neg_frac" not in update_metrics(none, torch.zeros(2, 3), b, torch.ones(2, 3))


def test_the_anchor_probability_of_the_tokens_the_upper_clip_blocked():
    """DAPO's Fig. 3a as a metric: the mean π_prox of the up-clipped tokens, against all sampled tokens."""
    b = _batch([1.0, 0.0], [3, 2], T=3)
    b.prox_logp = torch.tensor([[0.1, 0.9, 0.5], [0.3, 0.8, 0.7]]).log()  # (row 1, token 2) is padding
    ratio = torch.ones(2, 3)
    high = torch.tensor([[True, False, True], [False, False, True]])  # the padded token does not count
    info = LossInfo(ratio=ratio, clip_low=torch.zeros(2, 3, dtype=torch.bool), clip_high=high)
    m = update_metrics(info, torch.zeros(2, 3), b, entropy=torch.ones(2, 3))
    assert m["clip/high_prob"] == pytest.approx((0.1 + 0.5) / 2)
    assert m["prob/mean"] == pytest.approx((0.1 + 0.9 + 0.5 + 0.3 + 0.8) / 5)
    none = update_metrics(LossInfo(ratio=ratio, clip_low=high & False, clip_high=high & False), torch.zeros(2, 3), b,
                          entropy=torch.ones(2, 3))
    assert "clip/high_prob" not in none and "clip/high_prob" not in update_metrics(LossInfo(ratio=ratio),
                                                                                     torch.zeros(2, 3), b, torch.ones(2, 3))
    a3po = LossInfo(ratio=ratio, clip_low=high & False, clip_high=high, prox_logp=torch.full((2, 3), 0.25).log())
    assert update_metrics(a3po, torch.zeros(2, 3), b, torch.ones(2, 3))["clip/high_prob"] == pytest.approx(0.25)
    per_update = reduce_updates([none, m])
    assert "clip/high_prob@u0" not in per_update and per_update["clip/high_prob@u1"] == pytest.approx(0.3)
    assert per_update["clip/high_prob"] == pytest.approx(0.3)  # the mean over the updates that blocked a token


def test_grad_moments():
    grads = torch.tensor([[1.0, 0.0], [3.0, 0.0], [2.0, 3.0], [2.0, -3.0]])
    m = grad_moments(grads)
    # mean = (2, 0); deviations² = 1, 1, 9, 9 -> var = 20 / 3
    # ‖ḡ‖² = 4 overestimates ‖E g‖² by var / M: snr = (4 - (20/3) / 4) / (20/3) = 0.6 - 0.25 = 0.35
    assert m["grad/mean_norm"] == pytest.approx(2.0)
    assert m["grad/var"] == pytest.approx(20 / 3)
    assert m["grad/snr"] == pytest.approx(0.35)
    assert m["grad/snr_se"] > 0


def test_debiased_snr_is_unbiased_for_pure_noise():
    gen = torch.Generator().manual_seed(0)
    # E g = 0: the raw ‖ḡ‖²/var would average 1/M = 0.125, the debiased one 0
    snrs = [grad_moments(torch.randn(8, 50, generator=gen))["grad/snr"] for _ in range(400)]
    assert abs(sum(snrs) / len(snrs)) < 0.01


def test_explained_variance():
    targets = torch.tensor([1.0, 2.0, 3.0, 4.0])
    ones = torch.ones(4)
    assert explained_variance(targets, targets, ones) == pytest.approx(1.0)
    assert explained_variance(torch.full((4,), 2.5), targets, ones) == pytest.approx(0.0)
    assert explained_variance(targets + 1.0, targets, ones) == pytest.approx(1.0)  # a constant offset is explained


def test_reduce_updates_means_and_per_update_columns():
    row = reduce_updates([{"clip/active_frac": 0.0, "loss/policy": 1.0}, {"clip/active_frac": 0.2, "loss/policy": 3.0}])
    assert row == {"clip/active_frac": 0.1, "loss/policy": 2.0, "clip/active_frac@u0": 0.0, "clip/active_frac@u1": 0.2}


def test_gradient_statistics_in_a_run(tiny):
    hist = train(replace(tiny, grad_stats_every=2, grad_stats_batches=3, adv="none"), progress=False, cache=False)
    baseline = train(replace(tiny, grad_stats_every=2, grad_stats_batches=3, adv="rloo"), progress=False, cache=False)
    stats = hist["grad/var"].dropna()
    assert len(stats) == 2 and (stats > 0).all() and hist["grad/snr"].notna().sum() == 2
    # measuring gradients must not change what the run does
    plain = train(replace(tiny, adv="none"), progress=False, cache=False)
    assert hist["reward/mean"].equals(plain["reward/mean"])
    assert baseline["grad/var"].notna().sum() == 2


def test_every_logged_metric_is_in_the_glossary(tiny):
    hist = train(replace(tiny, loss="decoupled_ppo", staleness=1, minibatches=2), progress=False, cache=False)
    ppo = train(replace(tiny, loss="ppo"), progress=False, cache=False)
    sapo = train(replace(tiny, loss="sapo"), progress=False, cache=False)
    logged = {c.split("@")[0] for h in (hist, ppo, sapo) for c in h.columns}
    missing = logged - set(GLOSSARY)
    assert not missing, f"metrics without a glossary entry: {sorted(missing)}"


def test_measurements_at_fixed_parameters(tiny):
    from xxpo_lab.measure import measure_gradients, score_norms

    plain = measure_gradients(replace(tiny, loss="pg", adv="none", grad_stats_batches=4), seed=3)
    again = measure_gradients(replace(tiny, loss="pg", adv="none", grad_stats_batches=4), seed=3)
    assert plain == pytest.approx(again, nan_ok=True, rel=0, abs=0)  # deterministic for a seed, nothing trained
    critic = measure_gradients(replace(tiny, loss="pg", adv="gae", grad_stats_batches=4), seed=3, critic_steps=12)
    assert critic["grad/var"] > 0 and -1.0 < critic["value/explained_var"] <= 1.0
    norms = score_norms(tiny, n=10, seed=1)
    assert len(norms) == 10 and (norms["score_norm2"] > 0).all() and set(norms["correct"]) <= {True, False}


def test_gradient_statistics_take_the_first_update_of_a_step(tiny):
    # prox = behav and d = 1 for every measured batch, so A-3PO's anchor is the sampler's and its gradient is
    # decoupled PPO's (which would recompute prox in training, not here): the same statistics, bit for bit
    from xxpo_lab.measure import measure_gradients

    cfg = replace(tiny, grad_stats_batches=3)
    a3po = measure_gradients(replace(cfg, loss="a3po"), seed=5)
    decoupled = measure_gradients(replace(cfg, loss="decoupled_ppo"), seed=5)
    assert a3po == pytest.approx(decoupled, nan_ok=True, rel=0, abs=0) and a3po["grad/var"] > 0


def test_parallel_map_keeps_its_workers_while_code_and_environment_stay(monkeypatch):
    from xxpo_lab import runs

    jobs = [{"base": b, "exp": 2} for b in range(4)]
    assert runs.parallel_map(pow, jobs, workers=2, progress=False) == [0, 1, 4, 9]
    first = runs._POOL[0][1]
    runs.parallel_map(pow, jobs, workers=2, progress=False)
    assert runs._POOL[0][1] is first  # reused: no second start-up
    monkeypatch.setenv("XXPO_CACHE", str(Path(runs.__file__).parent / "elsewhere"))
    assert runs.parallel_map(pow, jobs, workers=2, progress=False) == [0, 1, 4, 9]
    assert len(runs._POOL) == 1 and runs._POOL[0][1] is not first  # the workers read XXPO_*: new ones
    with pytest.raises(ZeroDivisionError):
        runs.parallel_map(pow, [{"base": 0, "exp": -1}] * 3, workers=2, progress=False)
    assert runs._POOL == []  # a failed job drops the pool and its queued jobs


def test_parallel_map_keeps_the_order():
    from xxpo_lab.runs import parallel_map

    assert parallel_map(pow, [{"base": b, "exp": 2} for b in range(5)], workers=2, progress=False) == [0, 1, 4, 9, 16]


def test_every_loss_info_field_is_logged_under_a_glossary_name():
    """Nothing a loss reports is dropped: each LossInfo field has a reduction, and its metrics are in GLOSSARY."""
    from dataclasses import fields

    from xxpo_lab.diagnostics import LOSS_INFO_METRICS, loss_metrics

    names = [f.name for f in fields(LossInfo)]
    assert sorted(LOSS_INFO_METRICS) == sorted(names)
    mask = torch.ones(2, 3)
    flags = torch.tensor([[True, False, False], [False, False, True]])
    info = LossInfo(**{n: (flags if n in ("clip_low", "clip_high", "out_of_band", "dual_clip", "is_masked", "is_capped")
                           else torch.rand(2, 3)) for n in names})
    metrics = loss_metrics(info, torch.zeros(2, 3), mask)
    assert set(metrics) <= set(GLOSSARY), set(metrics) - set(GLOSSARY)
    for n in names[1:]:  # each optional field adds at least one metric of its own (ratio is always there)
        alone = {"ratio": info.ratio} | ({n: getattr(info, n)} if n not in ("clip_low", "clip_high") else
                                         {"clip_low": flags, "clip_high": flags})
        assert set(loss_metrics(LossInfo(**alone), torch.zeros(2, 3), mask)) > set(
            loss_metrics(LossInfo(ratio=info.ratio), torch.zeros(2, 3), mask)), n


def test_seq_std_is_the_within_row_spread_over_rows_with_two_or_more_tokens():
    from xxpo_lab.diagnostics import seq_std

    # row 0: (0.1, -0.1) -> std 0.1; row 1: (0.0, 0.3, 0.6) -> mean 0.3, std sqrt((0.09 + 0 + 0.09) / 3) = sqrt(0.06)
    # row 2: one token, no spread: left out. Mean of the two: (0.1 + 0.24495) / 2
    x = torch.tensor([[0.1, -0.1, 9.0], [0.0, 0.3, 0.6], [5.0, 9.0, 9.0]])
    mask = torch.tensor([[1.0, 1, 0], [1, 1, 1], [1, 0, 0]])
    assert seq_std(x, mask) == pytest.approx((0.1 + 0.06**0.5) / 2)
