"""Behaviours the chapters rely on, each pinned by a test that fails for the bug it names.

Staleness, epochs and minibatches, dynamic sampling's refill, the optimizer step, gradient clipping, truncation masking, the critics'
losses and GAE's whitening, and resuming with the prompt critic.
"""

import math
import time
from dataclasses import replace

import pandas as pd
import pytest
import torch

from xxpo_lab import loop, train
from xxpo_lab.advantages import _masked_whiten, gae, gae_critic, shaped_rewards
from xxpo_lab.batch import Batch
from xxpo_lab.config import Config, resolve
from xxpo_lab.critic import prompt_value_loss, value_loss

CPU = torch.device("cpu")
F64 = torch.float64


def _weights(model) -> dict:
    """The parameters (tied embeddings once; a state dict lists them twice)."""
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def _same(a: dict, b: dict) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("staleness", [1, 2])
def test_step_k_samples_with_the_weights_of_step_k_minus_d(tiny, monkeypatch, staleness):
    """Asynchronous RL, simulated exactly: step k's rollouts come from the policy as it was at the start of
    step max(0, k - d), and each row's version_gap is k + 1 - that version (A-3PO's d)."""
    cfg = resolve(replace(tiny, staleness=staleness, steps=5, lr=3e-3))
    state = loop.setup(cfg, CPU)
    start_of, seen = [], []
    real_collect = loop.collect

    def spy(state_, behav, version, *args):
        seen.append((version, _weights(behav)))
        return real_collect(state_, behav, version, *args)

    monkeypatch.setattr(loop, "collect", spy)
    for step in range(cfg.steps):
        start_of.append(_weights(state.policy))
        loop.training_step(state, step)
    for k, (version, weights) in enumerate(seen):
        assert version == max(0, k - staleness), (k, version)
        assert _same(weights, start_of[max(0, k - staleness)]), f"step {k} sampled with the wrong weights"
    assert not _same(start_of[0], start_of[-1])  # the policy moved, so the check above has teeth


def test_version_gap_reaches_the_loss(tiny, monkeypatch):
    cfg = resolve(replace(tiny, staleness=2, steps=4, loss="a3po"))
    state = loop.setup(cfg, CPU)
    gaps = []
    real = loop.loss_of
    monkeypatch.setattr(loop, "loss_of", lambda name, logp, b, c: (gaps.append(b.version_gap.unique().tolist()),
                                                                    real(name, logp, b, c))[1])
    for step in range(cfg.steps):
        loop.training_step(state, step)
    assert gaps == [[1], [2], [3], [3]]  # steps 0, 1 and 2 sample with version 0; step 3 with version 1


@pytest.mark.parametrize("epochs, minibatches", [(1, 1), (3, 1), (2, 2)])
def test_a_step_takes_epochs_times_minibatches_updates_on_whole_groups(tiny, monkeypatch, epochs, minibatches):
    cfg = resolve(replace(tiny, epochs=epochs, minibatches=minibatches, lr=3e-3))
    state = loop.setup(cfg, CPU)
    calls = []
    real_update = loop.update

    def spy(state_, mb, step):
        calls.append((mb.B, _weights(state_.policy)))
        return real_update(state_, mb, step)

    monkeypatch.setattr(loop, "update", spy)
    row = loop.training_step(state, 0)
    assert len(calls) == epochs * minibatches
    assert all(size == cfg.P * cfg.G // minibatches for size, _ in calls)
    assert all(not _same(a, b) for (_, a), (_, b) in zip(calls, calls[1:]))  # each update moved the policy
    assert f"kl/k3@u{epochs * minibatches - 1}" in row and f"kl/k3@u{epochs * minibatches}" not in row


def test_an_update_steps_the_optimizer_and_clips_the_gradient(tiny):
    """Plain SGD at lr 1 makes the clip visible: the parameters move by exactly lr · (clipped gradient)."""
    cfg = resolve(replace(tiny, max_grad_norm=1e-3, warmup_steps=1, lr=1.0))
    moved = {}
    for clip in (1e-3, 1e3):
        state = loop.setup(replace(cfg, max_grad_norm=clip), CPU)
        state.opt = torch.optim.SGD(state.policy.parameters(), lr=1.0)
        before = _weights(state.policy)
        loop.training_step(state, 0)
        after = _weights(state.policy)
        moved[clip] = math.sqrt(sum(((after[k] - before[k]).float() ** 2).sum().item() for k in before))
    assert moved[1e-3] == pytest.approx(1e-3, rel=1e-3)  # one update, gradient clipped to norm 1e-3
    assert moved[1e3] > 10 * moved[1e-3]  # unclipped, the same update is much larger


def test_truncated_responses_carry_no_loss_with_mask_truncated(tiny, monkeypatch):
    cfg = resolve(replace(tiny, T_max=4, mask_truncated=True, steps=3))  # short budget: truncation happens
    state = loop.setup(cfg, CPU)
    masks = []
    real = loop.loss_of
    monkeypatch.setattr(loop, "loss_of", lambda name, logp, b, c: (masks.append((b.mask.clone(), b.truncated)),
                                                                    real(name, logp, b, c))[1])
    for step in range(cfg.steps):
        loop.training_step(state, step)
    truncated = torch.cat([t for _, t in masks])
    assert truncated.any(), "no truncated response: the test would not test anything"
    for mask, trunc in masks:
        assert (mask[trunc] == 0).all() and (mask[~trunc].sum(-1) > 0).all()



def test_a_minibatch_with_every_response_filtered_is_skipped(tiny):
    """Overlong filtering can mask a whole minibatch (one group per minibatch, all truncated): that update is
    not taken (no AdamW momentum step on a zero gradient) and logs nothing, instead of failing on an empty
    reduction; the step's other updates still run."""
    cfg = resolve(replace(tiny, T_max=4, mask_truncated=True, steps=1))
    state = loop.setup(cfg, CPU)
    b, _ = loop.collect(state, state.policy, 0, state.rng, state.gen, {})
    loop.prepare(state, b, {})
    b.mask = torch.zeros_like(b.mask)
    before = _weights(state.policy)
    assert loop.update(state, b, 0) == {}
    assert _same(before, _weights(state.policy))
    b.mask[0, 0], b.adv[0, 0] = 1.0, 1.0  # one valid token with a push: the update runs and reports
    assert "ratio/mean" in loop.update(state, b, 0)
    assert not _same(before, _weights(state.policy))

# each group's correctness, round by round: S = mixed (signal), 0 = all wrong, 1 = all right
REFILL_ROUNDS = [["S", "0", "1", "S"], ["0", "S", "0", "0"], ["1", "0", "0", "0"], ["S", "S", "S", "S"]]


@pytest.mark.parametrize("max_refill, with_signal, rounds", [(5, 7, 4), (2, 3, 3), (1, 3, 2)])
def test_dynamic_sampling_refills_with_groups_that_have_signal(tiny, monkeypatch, max_refill, with_signal, rounds):
    """Groups with equal rewards are dropped and new prompts sampled, at most max_refill extra rounds; a batch
    still short after them is filled with dropped groups (in the order they were sampled)."""
    cfg = resolve(replace(tiny, dynamic_sampling=True, max_refill=max_refill))
    state = loop.setup(cfg, CPU)
    pattern = {"S": [True, False, False, True], "0": [False] * 4, "1": [True] * 4}
    calls = iter(REFILL_ROUNDS)
    real_sample = loop.sample

    def slow_sample(*a, **k):  # 10 ms a round, so the times must add up over the rounds
        time.sleep(0.01)
        return real_sample(*a, **k)

    def scripted_score(*a, **kw):
        time.sleep(0.01)
        return torch.tensor([c for g in next(calls) for c in pattern[g]])

    monkeypatch.setattr(loop, "sample", slow_sample)
    monkeypatch.setattr(loop, "score", scripted_score)
    times = {}
    b, kept_frac = loop.collect(state, state.policy, 0, state.rng, state.gen, times)
    assert kept_frac == with_signal / (rounds * cfg.P) and state.samples == rounds * cfg.P * cfg.G
    assert times["time/sample"] >= 0.01 * rounds and times["time/score"] >= 0.01 * rounds  # every round's price
    kept = min(with_signal, cfg.P)
    groups = b.correct.view(cfg.P, cfg.G)
    has_signal = groups.any(-1) & ~groups.all(-1)
    assert has_signal.tolist() == [True] * kept + [False] * (cfg.P - kept)  # kept groups first, then dropped ones
    if kept < cfg.P:  # the first dropped group fills the batch: round 1's all-wrong group
        assert not groups[kept].any()


def test_without_dynamic_sampling_every_sampled_group_is_trained_on(tiny, monkeypatch):
    state = loop.setup(resolve(tiny), CPU)
    monkeypatch.setattr(loop, "score", lambda *a, **kw: torch.tensor([False] * (tiny.P * tiny.G)))
    b, kept_frac = loop.collect(state, state.policy, 0, state.rng, state.gen, {})
    assert kept_frac == 1.0 and b.B == tiny.P * tiny.G and state.samples == tiny.P * tiny.G


def test_gae_critic_whitens_gae_over_the_valid_tokens():
    gen = torch.Generator().manual_seed(3)
    mask = (torch.arange(5) < torch.tensor([[2], [5], [3], [4]])).to(F64)
    b = Batch.of(mask, reward=torch.tensor([1.0, 0.0, 1.0, 0.0], dtype=F64),
                 values=torch.randn(4, 5, generator=gen, dtype=F64) * mask)
    cfg = Config(loss="ppo", G=2, gamma=0.9, lam=0.8)
    adv, returns = gae_critic(b, cfg)
    _, token_reward = shaped_rewards(b, cfg)
    raw, raw_returns = gae(token_reward, b.values, mask, 0.9, 0.8)
    torch.testing.assert_close(adv, _masked_whiten(raw, mask))
    torch.testing.assert_close(returns, raw_returns)  # the critic regresses on unwhitened returns
    valid = adv[mask == 1]
    assert abs(valid.mean().item()) < 1e-9 and valid.std().item() == pytest.approx(1.0, abs=1e-6)


def test_ppo_value_loss_takes_the_larger_of_the_clipped_and_unclipped_errors():
    # V_old = 0, returns = 1, eps 0.2. V = 0.5: unclipped (0.5-1)² = 0.25, clipped V_old+0.2 = 0.2 -> 0.64
    #   -> max 0.64, half of it 0.32, clipped branch chosen. V = 1.1: unclipped 0.01, clipped 0.2 -> 0.64
    #   -> 0.32 again. V = 0.1: unclipped 0.81, clipped 0.1 -> 0.81 (inside the band) -> 0.405.
    values = torch.tensor([[0.5, 1.1, 0.1]], dtype=F64)
    loss, clipped = value_loss(values, torch.zeros_like(values), torch.ones_like(values), torch.ones_like(values), 0.2)
    assert loss.item() == pytest.approx((0.32 + 0.32 + 0.405) / 3)
    assert clipped.tolist() == [[True, True, False]]


def test_prompt_value_loss_is_bce_on_the_reward():
    logit = torch.tensor([0.0, math.log(3.0)])
    # BCE(σ(0) = 0.5, 1) = ln 2; BCE(σ(ln 3) = 0.75, 0) = -ln 0.25 = ln 4
    assert prompt_value_loss(logit, torch.tensor([1.0, 0.0])).item() == pytest.approx((math.log(2) + math.log(4)) / 2)


def test_resume_with_the_prompt_critic_ends_identical(tiny, tmp_path, monkeypatch):
    cfg = replace(tiny, steps=5, loss="sppo", G=1, P=8)
    full = train(cfg, progress=False, cache=False)
    calls = {"n": 0}
    real_step = loop.training_step

    def crash_after_two(state, step):
        if calls["n"] == 2:
            raise KeyboardInterrupt
        calls["n"] += 1
        return real_step(state, step)

    monkeypatch.setattr(loop, "training_step", crash_after_two)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, progress=False, cache=False, checkpoint_dir=tmp_path, checkpoint_every=1)
    monkeypatch.setattr(loop, "training_step", real_step)
    resumed = train(cfg, progress=False, cache=False, checkpoint_dir=tmp_path, checkpoint_every=1)
    steady = lambda h: h[[c for c in h if not c.startswith(("time/", "mem/peak"))]]
    pd.testing.assert_frame_equal(steady(full), steady(resumed))
    assert "value/explained_var" in full  # the prompt critic was trained and checkpointed


# -------------------------------------------------------------------------------------------------
# the run's machinery: optimizers, extra models, the learning-rate warmup, timings and memory (each test
# written for mutants that survived `make mutate`: tests/README.md)


def test_setup_builds_the_optimizers_and_only_the_extra_models_the_config_asks_for(tiny):
    plain = loop.setup(resolve(tiny), CPU)
    assert plain.critic is None and plain.ref is None and plain.behav is None
    cfg = resolve(replace(tiny, loss="ppo", beta=0.04, staleness=1, lr=2e-4, weight_decay=0.05, critic_lr=7e-4))
    state = loop.setup(cfg, CPU)
    assert [(g["lr"], g["weight_decay"]) for g in state.opt.param_groups] == [(2e-4, 0.05)]
    assert [(g["lr"], g["weight_decay"]) for g in state.opt_critic.param_groups] == [(7e-4, 0.0)]
    for frozen in (state.ref, state.behav):  # copies of the policy that no gradient may reach
        assert frozen is not None and not any(p.requires_grad for p in frozen.parameters())


def test_the_learning_rate_rises_linearly_over_warmup_steps_then_stays(tiny):
    state = loop.setup(resolve(replace(tiny, warmup_steps=3, lr=3e-4)), CPU)
    lrs = []
    for step in range(5):
        loop.training_step(state, step)
        lrs.append(state.opt.param_groups[0]["lr"])
    assert lrs == pytest.approx([1e-4, 2e-4, 3e-4, 3e-4, 3e-4])
    state = loop.setup(resolve(replace(tiny, warmup_steps=0, lr=3e-4)), CPU)
    loop.training_step(state, 0), loop.training_step(state, 1)
    assert state.opt.param_groups[0]["lr"] == pytest.approx(3e-4)  # no warmup: the full rate from the start


def test_a_step_times_its_parts_and_the_run_adds_the_steps_up(tiny):
    t0 = time.perf_counter()
    hist = train(replace(tiny, loss="ppo", dynamic_sampling=True), progress=False, cache=False)
    wall = time.perf_counter() - t0
    steps = hist[hist["step"] < tiny.steps]
    assert steps["time/step"].sum() < wall
    parts = steps[["time/sample", "time/score", "time/update"]]
    assert (parts > 0).all().all()
    assert (parts.sum(axis=1) <= steps["time/step"]).all()
    evaluated = hist.dropna(subset=["eval/accuracy"])  # time/elapsed: the training seconds before the row
    elapsed = steps["time/step"].cumsum().shift(fill_value=0.0).tolist() + [steps["time/step"].sum()]
    assert evaluated["time/elapsed"].tolist() == pytest.approx([elapsed[s] for s in evaluated["step"]])


def test_a_critic_run_logs_the_policy_the_critic_and_the_memory_of_both(tiny):
    hist = train(replace(tiny, loss="ppo"), progress=False, cache=False)
    steps = hist[hist["step"] < tiny.steps]
    for col in ("loss/policy", "grad/norm", "clip/active_frac", "loss/value", "value/explained_var",
                "mem/policy_params_mb", "mem/policy_optim_mb", "mem/critic_params_mb", "mem/critic_optim_mb"):
        assert steps[col].notna().all(), col
    assert (steps["value/explained_var"] <= 1).all()
    assert (steps["mem/critic_params_mb"] > 0).all() and (steps["mem/policy_optim_mb"] > 0).all()
    # the process's peak resident memory, in MB: a Python with torch holds more than 50 MB, and less than 1 TB
    assert (steps["mem/peak_mb"] > 50).all() and (steps["mem/peak_mb"] < 2**20).all()


def test_gradient_statistics_are_taken_on_the_steps_grad_stats_every_names(tiny):
    hist = train(replace(tiny, steps=5, grad_stats_every=2, grad_stats_batches=3), progress=False, cache=False)
    assert hist.dropna(subset=["grad/var"])["step"].tolist() == [0, 2, 4]


def test_a_non_finite_gradient_names_the_gradient(tiny, monkeypatch):
    # sqrt(|x|) at x = 0: a finite loss whose gradient is nan
    from xxpo_lab.losses import LOSSES

    spec = LOSSES["grpo"]

    def nan_gradient(logp, b, cfg):
        loss, info = spec.fn(logp, b, cfg)
        return loss + (logp - logp.detach()).abs().sqrt().sum(), info

    monkeypatch.setitem(LOSSES, "grpo", replace(spec, fn=nan_gradient))
    with pytest.raises(loop.NonFiniteError, match=r"^step 0: grad/norm is nan"):
        train(tiny, progress=False, cache=False)


def test_has_signal_reads_correctness_not_the_shaped_reward():
    """Groups of 2: (right, wrong) has signal; (right, right) and (wrong, wrong) do not, even when overlong
    shaping gave the two wrong answers different rewards (the NeMo-RL#2431 trap)."""
    correct = torch.tensor([True, False, True, True, False, False])
    assert loop.has_signal(correct, G=2).tolist() == [True, False, False]
    cfg = resolve(Config(T_max=8, overlong_buffer=4))
    reward = loop.shaped_reward(correct, torch.tensor([2, 2, 2, 2, 3, 8]), cfg)
    assert reward[4] != reward[5]  # the all-wrong group's rewards differ: a test on rewards would keep it
