"""Asynchronous RL: the time model (`timeline`), A-3PO's interpolated anchor and its measurement, and the
config errors of stale data. Book: ch. 6 and 7."""

from dataclasses import replace

import pytest
import torch

from xxpo_lab import train
from xxpo_lab.config import Config, ConfigError
from xxpo_lab.diagnostics import prox_error
from xxpo_lab.losses import interpolate_prox
from xxpo_lab.timeline import schedule, steps_per_second

F64 = torch.float64


def test_synchronous_schedule_alternates_generation_and_training():
    # d_max = 0: generate 2 s, train 1 s, then generate with the new weights: steps end at 3, 6, 9
    t = schedule([2.0, 2.0, 2.0], [1.0, 1.0, 1.0], d_max=0)
    train_rows, gen_rows = t[t.phase == "train"], t[t.phase == "generate"]
    assert train_rows["end"].tolist() == [3.0, 6.0, 9.0]
    assert gen_rows["start"].tolist() == [0.0, 3.0, 6.0]
    assert gen_rows["staleness"].tolist() == [0, 0, 0]
    assert steps_per_second(t) == pytest.approx(3 / 9)


def test_one_step_of_staleness_overlaps_generation_with_training():
    # d_max = 1: batch k starts as soon as the generator is free and step k-2 is done.
    # gen: [0,2] [2,4] [4,6] [6,8]; train: [2,3] [4,5] [6,7] [8,9]; batch 1 starts at 2 with version 0 (stale 1)
    t = schedule([2.0] * 4, [1.0] * 4, d_max=1)
    gen_rows = t[t.phase == "generate"]
    assert gen_rows["start"].tolist() == [0.0, 2.0, 4.0, 6.0]
    assert gen_rows["version"].tolist() == [0, 0, 1, 2]  # the newest weights published when the batch starts
    assert gen_rows["staleness"].tolist() == [0, 1, 1, 1]
    assert t[t.phase == "train"]["end"].tolist() == [3.0, 5.0, 7.0, 9.0]


def test_a_slow_trainer_makes_the_generator_wait_for_the_staleness_bound():
    # train 3 s, generate 1 s, d_max = 1: batch 2 waits for step 0's end (t = 4): gen [0,1] [1,2] [4,5] [7,8]
    t = schedule([1.0] * 4, [3.0] * 4, d_max=1)
    gen_rows = t[t.phase == "generate"]
    assert gen_rows["start"].tolist() == [0.0, 1.0, 4.0, 7.0]
    assert gen_rows["staleness"].max() == 1
    assert t[t.phase == "train"]["end"].tolist() == [4.0, 7.0, 10.0, 13.0]


def test_schedule_rejects_a_negative_bound_and_unequal_lengths():
    with pytest.raises(ValueError, match=r"d_max = -1 is not allowed: .* >= 0"):
        schedule([1.0], [1.0], d_max=-1)
    with pytest.raises(ValueError, match="gen_s has 2 steps and train_s 1"):
        schedule([1.0, 1.0], [1.0], d_max=1)


def test_interpolated_anchor_loglinear_and_linear_by_hand():
    # behav_logp = log 0.2, logp = log 0.6. d = 1: both give log 0.2 (α = 1).
    # d = 2, loglinear: (log 0.2 + log 0.6)/2 = log sqrt(0.12) = log 0.34641; linear: log(0.1 + 0.3) = log 0.4.
    # d = 4, loglinear: 0.25 log 0.2 + 0.75 log 0.6 = log(0.2^0.25 · 0.6^0.75) = log 0.45590; linear: log(0.05 + 0.45)
    behav = torch.full((3, 1), 0.2, dtype=F64).log()
    logp = torch.full((3, 1), 0.6, dtype=F64).log()
    d = torch.tensor([1, 2, 4])
    torch.testing.assert_close(interpolate_prox(behav, logp, d, "loglinear").exp()[:, 0],
                               torch.tensor([0.2, 0.12 ** 0.5, 0.2 ** 0.25 * 0.6 ** 0.75], dtype=F64))
    torch.testing.assert_close(interpolate_prox(behav, logp, d, "linear").exp()[:, 0],
                               torch.tensor([0.2, 0.4, 0.5], dtype=F64))


def test_interpolated_anchor_lies_between_the_sampler_and_the_policy_and_carries_no_gradient():
    gen = torch.Generator().manual_seed(0)
    behav = -3 * torch.rand(8, 5, generator=gen, dtype=F64)
    logp = (-3 * torch.rand(8, 5, generator=gen, dtype=F64)).requires_grad_(True)
    d = torch.randint(1, 9, (8,), generator=gen)
    for method in ("loglinear", "linear"):
        prox = interpolate_prox(behav, logp, d, method)
        lo, hi = torch.minimum(behav, logp.detach()), torch.maximum(behav, logp.detach())
        assert ((prox >= lo - 1e-12) & (prox <= hi + 1e-12)).all() and not prox.requires_grad


def test_prox_error_by_hand():
    # approx - exact = [0.1, -0.3] on the valid tokens, so the mean |.| is 0.2; the third token is padding.
    # exact lies between behav and logp on token 0 (-1 in [-2, -0.5]) but not on token 1 (-3 outside [-2, -1])
    approx = torch.tensor([[-0.9, -3.3, 5.0]], dtype=F64)
    exact = torch.tensor([[-1.0, -3.0, 0.0]], dtype=F64)
    behav = torch.tensor([[-2.0, -2.0, 0.0]], dtype=F64)
    logp = torch.tensor([[-0.5, -1.0, 0.0]], dtype=F64)
    out = prox_error(approx, exact, behav, logp, torch.tensor([[1.0, 1.0, 0.0]], dtype=F64))
    assert out["prox/approx_err"] == pytest.approx(0.2)
    assert out["prox/sandwich_frac"] == pytest.approx(0.5)


def test_measure_prox_logs_the_error_zero_when_synchronous_and_keeps_its_time_out_of_the_step(tiny):
    base = replace(tiny, loss="a3po", measure_prox=True, minibatches=2, steps=4, lr=3e-3)
    sync = train(base, progress=False, cache=False)
    # staleness 0: d = 1, the anchor is the sampler, which is the policy at the start of the step: exact
    assert sync["prox/approx_err@u0"].dropna().max() == pytest.approx(0.0, abs=1e-6)
    assert sync["prox/approx_err@u1"].dropna().max() == pytest.approx(0.0, abs=1e-6)
    stale = train(replace(base, staleness=2), progress=False, cache=False)
    assert stale["prox/approx_err"].dropna().iloc[-1] > 1e-4  # d = 3 on the last steps: an approximation
    assert (stale["time/measure"].dropna() > 0).all() and (stale["time/prox"].dropna() == 0).all()
    plain = train(replace(base, staleness=2, measure_prox=False), progress=False, cache=False)
    # measuring changes nothing the run does: the same accuracies, and no time/measure column
    assert plain["eval/accuracy"].dropna().tolist() == stale["eval/accuracy"].dropna().tolist()
    assert "time/measure" not in plain and "prox/approx_err" not in plain


@pytest.mark.parametrize("changes, message", [
    ({"staleness": 8, "steps": 8}, r"^Config.staleness = 8 is not allowed: must be < steps = 8: with more, every "
                                   r"step would sample with the initial policy$"),
    ({"loss": "a3po", "prox_interp": "cubic"}, r"^Config.prox_interp = 'cubic' is not allowed: must be one of "
                                               r"linear, loglinear$"),
    ({"loss": "decoupled_ppo", "prox_interp": "linear"}, r"^Config.prox_interp = 'linear' is not allowed: loss "
                                                         r"'decoupled_ppo' does not use it \(the losses that do: a3po\)$"),
    ({"loss": "grpo", "measure_prox": True}, r"^Config.measure_prox = True is not allowed: loss 'grpo' does not use "
                                             r"it \(the losses that do: a3po\)$"),
])
def test_stale_data_settings_fail_when_the_config_is_made(changes, message):
    with pytest.raises(ConfigError, match=message):
        Config(**changes)
