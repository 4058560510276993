"""Sequence-Level PPO's prompt critic measured: what a finished run's critic predicts, token by token and
prompt by prompt, from the weights the run stored. Book: ch. 8."""

from dataclasses import replace

import pytest

from xxpo_lab import train
from xxpo_lab.measure import critic_by_position, critic_calibration, trained_state
from xxpo_lab.runs import StoreError, final_state


def test_trained_state_takes_the_same_steps_as_train(tiny):
    cfg = replace(tiny, loss="sppo", G=1, P=8)
    state = trained_state(cfg, seed=1, steps=3)
    hist = train(replace(cfg, seed=1), progress=False, cache=False)
    for name in ("reward/mean", "loss/policy", "loss/value"):
        assert [row[name] for row in state.rows] == pytest.approx(hist[name].iloc[:3].tolist(), rel=1e-6)


def test_final_state_holds_the_runs_last_policy_and_critic(tiny):
    cfg = replace(tiny, loss="sppo", G=1, P=8, seed=2)
    hist = train(cfg, progress=False)
    state, live = final_state(hist), trained_state(cfg, seed=2, steps=cfg.steps)
    for mine, theirs in ((state.policy, live.policy), (state.critic, live.critic)):
        for (name, a), b in zip(mine.state_dict().items(), theirs.state_dict().values()):
            assert a.equal(b), name
    with pytest.raises(StoreError, match="no final weights stored for run nope"):
        final_state("nope")


def test_calibration_counts_every_sample_and_the_critic_has_learned(tiny):
    cfg = replace(tiny, loss="sppo", G=1, P=8)
    table = critic_calibration(train(cfg, progress=False), n_prompts=6, n_samples=5)
    assert len(table) == 6 and (table["n_samples"] == 5).all()
    assert table["right"].between(0, 5).all()
    assert table["predicted"].between(0, 1).all()
    assert (table["predicted"] != 0.5).any()  # the value head starts at 0 (σ = 1/2); BCE steps moved it
    with pytest.raises(ValueError, match=r"adv='grpo': calibration needs a prompt critic \(adv='sppo'\)"):
        critic_calibration(train(tiny, progress=False), n_prompts=2, n_samples=2)


def test_token_critic_reads_every_position_and_the_prompt_critic_one_value_per_response(tiny):
    token = critic_by_position(train(replace(tiny, loss="ppo", adv="gae", G=1, P=8), progress=False), batches=2)
    assert (token["t"] >= 0).all() and set(token["batch"]) == {0, 1}
    assert set(token["reward"]) <= {0.0, 1.0}
    assert token.groupby(["batch", "row"])["t"].min().eq(0).all()  # every response has a first token
    prompt = critic_by_position(train(replace(tiny, loss="sppo", G=1, P=8), progress=False), batches=2)
    assert (prompt["t"] == -1).all() and len(prompt) == 2 * 8
    assert prompt["value"].between(0, 1).all()
