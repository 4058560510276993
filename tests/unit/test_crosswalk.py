"""The crosswalk's TRL column (xxpo_lab.integrations.crosswalk.RECIPES) against TRL's own code.

For every recipe with a TRL column: a GRPOConfig is built from it, the trainer takes its settings as
`GRPOTrainer.__init__` does, and TRL's `_compute_loss` on the same tensors equals the lab's loss under the
recipe's lab settings (value and gradient, three scales of off-policy drift); TRL's own scoring step
(`_generate_and_score_completions`, real generation on a tiny GPT-2) gives the lab's advantages for the
recipe's `scale_rewards`. The verl column is checked in verl's environment (tests/verl/test_crosswalk_verl.py).
"""

from __future__ import annotations

import zlib

import datasets
import pytest
import torch
import trl

from tests.unit.test_trl_integration import model_dir  # noqa: F401
from tests.unit.test_trl_parity import SCALES, T_MAX, TOL, B, G, make_data, our_batch, trainer  # noqa: F401
from xxpo_lab.advantages import ADVANTAGES
from xxpo_lab.batch import Batch
from xxpo_lab.config import Config, resolve
from xxpo_lab.integrations.crosswalk import ACTOR, RECIPES, crosswalk_table, recipe, verl_launch, verl_overrides
from xxpo_lab.integrations.crosswalk import T_MAX as T_MAX_MARK
from xxpo_lab.losses import LOSSES
from xxpo_lab.tasks import char_tokenizer

TRL_RECIPES = [r for r in RECIPES if r.trl is not None]
DERIVED = {"loss_type": "loss_type", "importance_sampling_level": "importance_sampling_level", "beta": "beta",
           "scale_rewards": "scale_rewards"}
"""GRPOTrainer attributes that __init__ copies from GRPOConfig fields (the others are read from args)."""


@pytest.fixture(scope="module")
def trl_args(tmp_path_factory):
    """Each recipe's GRPOConfig, validated by TRL. Built before the module's trainer: building TrainingArguments
    resets accelerate's process state, which the trainer then sets up again."""
    out = str(tmp_path_factory.mktemp("crosswalk_trl"))
    return {r.algorithm: trl.GRPOConfig(output_dir=out, per_device_train_batch_size=B, num_generations=G,
                                        max_completion_length=T_MAX, report_to=[], use_cpu=True, bf16=False,
                                        save_strategy="no", **r.trl) for r in TRL_RECIPES}


def with_args(tr, monkeypatch, args):
    """The trainer `tr` as GRPOTrainer.__init__ would set it up from `args`."""
    monkeypatch.setattr(tr, "args", args)
    for attr, name in DERIVED.items():
        monkeypatch.setattr(tr, attr, getattr(args, name))
    monkeypatch.setattr(tr, "epsilon_low", args.epsilon)
    monkeypatch.setattr(tr, "epsilon_high", args.epsilon_high if args.epsilon_high is not None else args.epsilon)


def lab_cfg(r, **extra) -> Config:
    return resolve(Config(**(r.lab | r.trl_lab | {"T_max": T_MAX} | extra)))


def test_every_recipe_names_a_lab_loss_and_advantage_and_the_table_has_them_all():
    for r in RECIPES:
        assert r.loss in LOSSES and r.lab["adv"] in ADVANTAGES, r.algorithm
        Config(**r.lab)  # valid lab settings
    table = crosswalk_table()
    assert list(table["algorithm"]) == [r.algorithm for r in RECIPES]
    assert table.loc[table["algorithm"] == "A-3PO", "TRL (GRPOConfig)"].item() == "LabGRPOTrainer(lab_loss='a3po')"
    assert recipe("GSPO").trl["importance_sampling_level"] == "sequence"
    with pytest.raises(KeyError, match=r"no recipe for algorithm 'PPO2': must be one of \['PPO', 'GRPO'"):
        recipe("PPO2")


def test_verl_overrides_are_full_paths_with_the_run_length():
    full = verl_overrides(recipe("Dr. GRPO"), T_max=16)
    assert full[ACTOR + "loss_scale_factor"] == 16 and full["algorithm.norm_adv_by_std_in_grpo"] is False
    assert T_MAX_MARK not in full.values()
    assert verl_overrides(recipe("A-3PO")) == {ACTOR + "policy_loss.loss_mode": "xxpo_a3po"}


@pytest.mark.parametrize("scale", list(SCALES))
@pytest.mark.parametrize("r", TRL_RECIPES, ids=lambda r: r.algorithm)
def test_trl_settings_give_the_lab_loss(trl_args, trainer, monkeypatch, r, scale):  # noqa: F811
    with_args(trainer, monkeypatch, trl_args[r.algorithm])
    d = make_data(scale)
    logp = d.logp.clone().requires_grad_(True)
    monkeypatch.setattr(trainer, "_get_per_token_logps_and_entropies",
                        lambda *a, **k: (logp, d.entropy.clone(), None))
    inputs = {"prompt_ids": d.prompt_ids, "prompt_mask": d.prompt_mask, "completion_ids": d.completion_ids,
              "completion_mask": d.mask, "advantages": d.adv.clone(), "old_per_token_logps": d.old.clone(),
              "num_items_in_batch": d.mask.sum()}
    trl_loss = trainer._compute_loss(trainer.model, inputs)
    (trl_grad,) = torch.autograd.grad(trl_loss, logp)
    ours = d.logp.clone().requires_grad_(True)
    loss, _ = LOSSES[r.loss].fn(ours, our_batch(d), lab_cfg(r))
    (grad,) = torch.autograd.grad(loss, ours)
    rtol = 1e-7 if r.algorithm != "SAPO" else 1e-6  # TRL holds SAPO's 1.05 in float32
    torch.testing.assert_close(loss.detach(), trl_loss.detach(), rtol=rtol, atol=TOL["atol"])
    torch.testing.assert_close(grad, trl_grad, rtol=rtol, atol=TOL["atol"])
    assert trl_grad.abs().max() > 1e-4


def reward_of(completions, **kwargs):
    """A deterministic reward in [0, 1) from the completion's text, so groups have spread."""
    return [zlib.crc32(c.encode()) % 1000 / 1000 for c in completions]


@pytest.fixture(scope="module")
def scorer(model_dir):  # noqa: F811
    """A real GRPOTrainer whose scoring step generates with a tiny GPT-2 and records the rewards it sees."""
    tok = char_tokenizer()
    seen = []

    def recorded(completions, **kwargs):
        seen.append(reward_of(completions))
        return seen[-1]

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        args = trl.GRPOConfig(output_dir=str(model_dir / "out_scorer"), per_device_train_batch_size=8, num_generations=4,
                              max_completion_length=6, report_to=[], use_cpu=True, bf16=False, beta=0.0,
                              save_strategy="no", seed=0)
        tr = trl.GRPOTrainer(model=str(model_dir / "model"), reward_funcs=recorded, args=args,
                             train_dataset=datasets.Dataset.from_dict({"prompt": ["12+3=", "4+5="] * 4}),
                             processing_class=tok)
    tr.model.train()
    return tr, seen


@pytest.mark.parametrize("r", [r for r in TRL_RECIPES if "scale_rewards" in r.trl], ids=lambda r: r.algorithm)
def test_trl_scoring_gives_the_lab_advantage(scorer, monkeypatch, r):
    tr, seen = scorer
    monkeypatch.setattr(tr, "scale_rewards", r.trl["scale_rewards"])
    out = tr._generate_and_score_completions([{"prompt": p} for p in ["12+3=", "12+3=", "12+3=", "12+3=",
                                                                      "4+5=", "4+5=", "4+5=", "4+5="]])
    reward = torch.tensor(seen[-1], dtype=torch.float32)
    mask = torch.ones(8, 1)
    cfg = lab_cfg(r, G=4)
    b = Batch.of(mask, reward=reward, correct=reward > 0.5)
    adv, _ = ADVANTAGES[r.lab["adv"]](b, cfg)
    torch.testing.assert_close(out["advantages"].float(), adv[:, 0], rtol=1e-5, atol=1e-6)
    assert adv.abs().max() > 0.1


def test_the_launch_turns_verls_correction_off_only_for_losses_that_refuse_it():
    assert "algorithm.rollout_correction.rollout_is=null" in verl_launch(recipe("VESPO"))
    assert "algorithm.rollout_correction.rollout_is=null" in verl_launch(recipe("Decoupled PPO"))
    assert "algorithm.rollout_correction.rollout_is=token" in verl_launch(recipe("A-3PO"))
    assert "algorithm.rollout_correction.rollout_is=token" in verl_launch(recipe("GMPO"))  # verl's own geo_mean
    assert "actor_rollout_ref.actor.loss_scale_factor=1024" in verl_launch(recipe("Dr. GRPO"))
