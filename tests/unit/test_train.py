"""The training loop: determinism, resume, run cache, bad files, non-finite stops, one smoke run per loss."""

from dataclasses import replace

import pandas as pd
import pytest
import torch

from xxpo_lab import LOSSES, Config, NonFiniteError, StoreError, loop, train
from xxpo_lab.codekey import package_sources
from xxpo_lab.config import resolve
from xxpo_lab.runs import run_key

NOISY = ("time/", "mem/peak")  # wall-clock columns differ between any two runs


def _steady(hist: pd.DataFrame) -> pd.DataFrame:
    return hist[[c for c in hist if not c.startswith(NOISY)]]


def test_same_config_and_seed_give_identical_histories(tiny):
    a = train(tiny, progress=False, cache=False)
    b = train(tiny, progress=False, cache=False)
    pd.testing.assert_frame_equal(_steady(a), _steady(b))
    c = train(replace(tiny, seed=1), progress=False, cache=False)
    assert not _steady(a).equals(_steady(c))


def test_history_has_one_row_per_step_and_a_final_evaluation(tiny):
    hist = train(tiny, progress=False, cache=False)
    assert list(hist["step"]) == list(range(tiny.steps + 1))
    assert hist["eval/accuracy"].notna().tolist() == [True, False, True, False, True]
    evaluated = hist.dropna(subset=["eval/accuracy"])
    # the policy evaluated at row k has seen the k batches before it; the last row has seen them all
    assert evaluated["eval/samples"].tolist() == [k * tiny.P * tiny.G for k in (0, 2, 4)]
    assert evaluated["time/elapsed"].iloc[0] == 0 and evaluated["time/elapsed"].is_monotonic_increasing
    assert hist.attrs["config"] == resolve(tiny).__dict__ | {}
    for col in ("reward/mean", "len/correct_mean", "clip/active_frac", "clip/active_frac@u0", "kl/k3", "entropy/mean",
                "grad/norm", "time/sample", "time/update", "mem/peak_mb", "mem/policy_params_mb", "adv/zero_std_frac"):
        assert col in hist, col


def test_resume_ends_identical_to_an_uninterrupted_run(tiny, tmp_path, monkeypatch):
    cfg = replace(tiny, steps=6, staleness=1, minibatches=2, loss="ppo")  # critic, snapshots and minibatches
    full = train(cfg, progress=False, cache=False)
    calls = {"n": 0}
    real_step = loop.training_step

    def crash_after_three(state, step):
        if calls["n"] == 3:
            raise KeyboardInterrupt  # the machine goes away mid-run
        calls["n"] += 1
        return real_step(state, step)

    monkeypatch.setattr(loop, "training_step", crash_after_three)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, progress=False, cache=False, checkpoint_dir=tmp_path, checkpoint_every=2)
    assert (tmp_path / "checkpoint.pt").exists()
    monkeypatch.setattr(loop, "training_step", real_step)
    resumed = train(cfg, progress=False, cache=False, checkpoint_dir=tmp_path, checkpoint_every=2)
    pd.testing.assert_frame_equal(_steady(full), _steady(resumed))


def test_run_cache_returns_the_stored_run_without_training(tiny, monkeypatch):
    cfg = replace(tiny, seed=11)
    first = train(cfg, progress=False)
    monkeypatch.setattr(loop, "setup", lambda *a: pytest.fail("a cached run was retrained"))
    again = train(cfg, progress=False)
    pd.testing.assert_frame_equal(first, again)
    assert again.attrs == first.attrs
    monkeypatch.undo()
    retrained = train(cfg, progress=False, cache=False)  # the flag turns the cache off
    pd.testing.assert_frame_equal(_steady(first), _steady(retrained))


def test_the_cache_key_follows_config_device_threads_and_code(tiny):
    cfg = resolve(tiny)
    key = run_key(cfg, torch.device("cpu"), 1)
    assert run_key(replace(cfg, lr=1e-3), torch.device("cpu"), 1) != key
    assert run_key(cfg, torch.device("cuda"), 1) != key
    assert run_key(cfg, torch.device("cpu"), 2) != key  # the thread count changes float sums on the CPU
    assert run_key(cfg, torch.device("cuda"), 1) == run_key(cfg, torch.device("cuda"), 2)  # but not on CUDA
    edited = package_sources() | {"loop": package_sources()["loop"].replace("cfg.lr * min(", "2 * cfg.lr * min(")}
    assert run_key(cfg, torch.device("cpu"), 1, sources=edited) != key  # the loop's code is in the key
    assert run_key(cfg, torch.device("cpu"), 1, sources=package_sources()) == key


def test_a_run_is_the_same_in_a_parallel_worker_and_in_this_process(tiny, tmp_path, monkeypatch):
    """run_many trains with one thread wherever it runs, and the warm start is one-threaded too, so a
    chapter's numbers do not depend on which runs happened to be cached (spawned workers)."""
    from xxpo_lab.policy import cpu_threads
    from xxpo_lab.runs import run_many

    monkeypatch.setenv("XXPO_CACHE", str(tmp_path))  # cold: the warm start and both runs are computed here
    cfgs = [replace(tiny, n_embd=64, seed=s) for s in (21, 22, 23)]  # wide enough for 2 threads to split sums
    in_workers = run_many(cfgs[:2], workers=2, progress=False)
    alone = run_many(cfgs[2:], progress=False)  # one missing run: trained in this process
    with cpu_threads(2):
        for cfg, hist in zip(cfgs, in_workers + alone):
            here = train(cfg, progress=False, cache=False, threads=1)
            pd.testing.assert_frame_equal(_steady(hist), _steady(here))
            assert hist.attrs["threads"] == 1
        assert not _steady(train(cfgs[2], progress=False, cache=False)).equals(_steady(alone[0]))  # 2 threads


def test_the_warm_start_has_the_same_weights_whatever_the_callers_thread_count(tiny):
    from xxpo_lab.policy import cpu_threads, make_policy

    weights = []
    for n in (1, 2):  # a raw warm_start differs between these two (float sums in another order)
        with cpu_threads(n):
            model, _, _ = make_policy(tiny, torch.device("cpu"), use_cache=False)
        weights.append(model.state_dict())
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_a_corrupt_cache_entry_is_an_error_not_a_retrain(tiny, tmp_path, monkeypatch):
    from xxpo_lab.runs import _paths

    monkeypatch.setenv("XXPO_CACHE", str(tmp_path))  # this test breaks its cache on purpose
    cfg = replace(tiny, seed=12)
    train(cfg, progress=False)
    table, _ = _paths(run_key(resolve(cfg), torch.device("cpu"), torch.get_num_threads()))
    table.write_bytes(b"not parquet")
    with pytest.raises(StoreError, match=r"(?s)cannot be read.*Delete both files, or pass cache=False"):
        train(cfg, progress=False)


def test_a_corrupt_or_foreign_checkpoint_is_an_error(tiny, tmp_path):
    (tmp_path / "checkpoint.pt").write_bytes(b"\x00garbage")
    with pytest.raises(StoreError, match="cannot read the checkpoint file"):
        train(tiny, progress=False, cache=False, checkpoint_dir=tmp_path, checkpoint_every=1)
    other = tmp_path / "other"
    train(replace(tiny, steps=2), progress=False, cache=False, checkpoint_dir=other, checkpoint_every=1)
    with pytest.raises(StoreError, match="was written for something else"):
        train(tiny, progress=False, cache=False, checkpoint_dir=other, checkpoint_every=1)


def test_a_non_finite_loss_stops_the_run_and_keeps_the_last_checkpoint(tiny, tmp_path, monkeypatch):
    spec = LOSSES["grpo"]
    calls = {"n": 0}

    def breaks_at_step_3(logp, b, cfg):
        calls["n"] += 1
        loss, info = spec.fn(logp, b, cfg)
        return (loss * float("nan") if calls["n"] == 4 else loss), info

    monkeypatch.setitem(LOSSES, "grpo", replace(spec, fn=breaks_at_step_3))
    with pytest.raises(NonFiniteError, match=r"step 3: loss/policy is nan") as err:
        train(replace(tiny, steps=6), progress=False, cache=False, checkpoint_dir=tmp_path, checkpoint_every=1)
    assert list(err.value.history["step"]) == [0, 1, 2]  # the good steps are not lost
    saved = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert saved["meta"]["step"] == 3 and all(torch.isfinite(v).all() for v in saved["state"]["policy"].values())


def test_staleness_samples_with_an_old_policy(tiny):
    hist = train(replace(tiny, staleness=2, steps=4), progress=False, cache=False)
    sync = train(replace(tiny, steps=4), progress=False, cache=False)
    # the first two steps sample with the initial policy either way; later ones drift from it
    assert hist["kl/k3@u0"].iloc[0] < 1e-6 and hist["kl/k3@u0"].iloc[3] > 1e-6
    assert sync["kl/k3@u0"].iloc[:4].max() < 1e-6


def test_dynamic_sampling_keeps_only_groups_with_signal(tiny):
    hist = train(replace(tiny, dynamic_sampling=True, steps=3), progress=False, cache=False).iloc[:-1]
    assert (hist["adv/zero_std_frac"] == 0).all()  # every group in the batch has mixed rewards
    assert (hist["data/kept_frac"] < 1).any()  # some sampled groups were dropped
    per_step = hist["samples"].diff().fillna(hist["samples"].iloc[0])
    assert (per_step >= tiny.P * tiny.G).all() and (per_step > tiny.P * tiny.G).any()


@pytest.mark.parametrize("name", list(LOSSES))
def test_every_loss_changes_the_parameters_and_raises_reward(name):
    from xxpo_lab import Config
    from xxpo_lab.policy import make_policy

    cfg = Config(task="copy", difficulty=3, T_max=5, n_layer=1, n_head=2, n_embd=32, P=8, G=8, steps=60,
                 eval_prompts=256, eval_every=60, warm_start_acc=0.3, lr=3e-4, loss=name)
    start, _, _ = make_policy(resolve(cfg))
    before = {k: v.clone() for k, v in start.state_dict().items()}
    captured = {}
    real_setup = loop.setup

    def keep_state(*args):
        captured["state"] = real_setup(*args)
        return captured["state"]

    loop.setup = keep_state
    try:
        hist = train(cfg, progress=False, cache=False)
    finally:
        loop.setup = real_setup
    after = captured["state"].policy.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    acc = hist["eval/accuracy"].dropna().values
    assert acc[-1] > acc[0] + 0.05, f"{name}: held-out accuracy {acc[0]:.3f} -> {acc[-1]:.3f}"


def test_the_final_policy_is_stored_with_the_run(tiny, tmp_path, monkeypatch):
    from xxpo_lab.runs import load_policy

    monkeypatch.setenv("XXPO_CACHE", str(tmp_path))
    captured = {}
    real_setup = loop.setup

    def keep_state(*args):
        captured["state"] = real_setup(*args)
        return captured["state"]

    monkeypatch.setattr(loop, "setup", keep_state)
    hist = train(tiny, progress=False)
    model, tokenizer = load_policy(hist)
    trained = captured["state"].policy.state_dict()
    assert all(torch.equal(v, trained[k]) for k, v in model.state_dict().items())
    assert tokenizer.eos_token_id == captured["state"].tokenizer.eos_token_id
    with pytest.raises(StoreError, match="train it with cache=True"):
        load_policy(train(replace(tiny, seed=5), progress=False, cache=False))


def test_pass_rate_counts_and_warm_start_min_steps(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("XXPO_CACHE", str(tmp_path))
    hist = train(replace(tiny, warm_start_min_steps=60), progress=False).iloc[:-1]
    counts = hist[[f"groups/correct@{j}" for j in range(tiny.G + 1)]]
    assert (counts.sum(axis=1) - 1).abs().max() < 1e-6
    assert (hist["adv/zero_std_frac"] - counts.iloc[:, [0, -1]].sum(axis=1)).abs().max() < 1e-6
    assert hist.attrs["warm_start"]["steps"] >= 60


def test_overlong_shaping_is_dapos_linear_ramp_over_the_last_tokens():
    """DAPO eq. 13: no penalty up to T_max - buffer, then a ramp to -penalty at T_max; reward_offset is added."""
    cfg = resolve(Config(T_max=10, overlong_buffer=4, overlong_penalty=1.0, reward_offset=0.5))
    correct = torch.tensor([True, True, False, True, False])
    lengths = torch.tensor([5, 6, 8, 10, 9])
    reward = loop.shaped_reward(correct, lengths, cfg)
    torch.testing.assert_close(reward, torch.tensor([1.5, 1.5, 0.5 - 0.5, 1.5 - 1.0, 0.5 - 0.75]))
    plain = loop.shaped_reward(correct, lengths, replace(cfg, overlong_buffer=0, reward_offset=0.0))
    torch.testing.assert_close(plain, correct.float())


def test_overlong_shaping_lowers_the_logged_reward_below_the_pass_rate(tiny):
    hist = train(replace(tiny, T_max=5, overlong_buffer=2, overlong_penalty=1.0), progress=False, cache=False)
    steps = hist.dropna(subset=["reward/mean"])
    assert (steps["reward/mean"] <= steps["reward/correct_frac"] + 1e-9).all()
    assert (steps["reward/mean"] < steps["reward/correct_frac"] - 1e-3).any()  # responses reach the ramp
    base = train(tiny, progress=False, cache=False).dropna(subset=["reward/mean"])
    assert (base["reward/mean"] == base["reward/correct_frac"]).all()


@pytest.mark.parametrize("kl_in, estimator, beta", [("loss", "k3", 1.0), ("reward", "k1", 3.0)])
def test_a_kl_penalty_logs_the_drift_from_the_reference_and_holds_it_back(tiny, kl_in, estimator, beta):
    """With beta > 0 the frozen reference is the start policy: kl/ref_k3 starts at 0, grows, and a strong
    beta keeps it below a negligible one (same seed, same samples at step 0). GRPO's k3 in the loss and
    PPO-RLHF's k1 in the reward (ALGORITHMS.md §0.4)."""
    fast = replace(tiny, steps=6, lr=3e-3, kl_in=kl_in, kl_estimator=estimator)
    weak = train(replace(fast, beta=1e-6), progress=False, cache=False)["kl/ref_k3"].dropna()
    strong = train(replace(fast, beta=beta), progress=False, cache=False)["kl/ref_k3"].dropna()
    assert weak.iloc[0] == 0.0 and strong.iloc[0] == 0.0
    assert weak.iloc[-1] > 0.01
    assert strong.sum() < 0.9 * weak.sum()
    assert "kl/ref_k3" not in train(tiny, progress=False, cache=False)  # no reference without a penalty


def test_the_value_clip_fraction_is_the_share_of_tokens_where_the_clipped_value_loss_was_larger(tiny):
    # one update starts at the sampled values: nothing to clip. With eps_value 1e-4 and two epochs the second
    # update's values have moved past the band, and where the clipped error is the larger the clip counts: the
    # step's mean over its two updates is above 0 and at most 1/2 (the first update's share is 0)
    one = train(replace(tiny, loss="ppo", eps_value=1e-4), progress=False, cache=False)
    two = train(replace(tiny, loss="ppo", epochs=2, eps_value=1e-4), progress=False, cache=False)
    assert (one["value/clip_frac"].dropna() == 0).all()
    frac = two["value/clip_frac"].dropna()
    assert len(frac) == tiny.steps and ((frac > 0) & (frac <= 0.5)).all()


def test_run_many_starts_the_longest_runs_first_and_returns_them_in_order(tiny, monkeypatch):
    from xxpo_lab import runs

    submitted = []

    def fake_parallel_map(fn, jobs, workers, progress, desc=""):
        submitted.extend(job["cfg"] for job in jobs)
        return [f"history of {job['cfg'].steps}x{job['cfg'].epochs}" for job in jobs]

    monkeypatch.setattr(runs, "parallel_map", fake_parallel_map)
    monkeypatch.setattr(runs, "load_run", lambda key: None)
    monkeypatch.setattr(runs, "make_policy", lambda cfg, device: None)
    cfgs = [replace(tiny, steps=4), replace(tiny, steps=40, epochs=1), replace(tiny, steps=8, epochs=8),
            replace(tiny, steps=2, epochs=2)]
    assert runs.run_many(cfgs) == ["history of 4x1", "history of 40x1", "history of 8x8", "history of 2x2"]
    # work: 4·3.5 = 14, 40·3.5 = 140, 8·21 = 168, 2·6 = 12
    assert [(c.steps, c.epochs) for c in submitted] == [(8, 8), (40, 1), (4, 1), (2, 2)]
