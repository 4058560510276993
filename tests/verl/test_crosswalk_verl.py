"""The crosswalk's verl column (xxpo_lab.integrations.crosswalk.RECIPES) against verl's own code, in verl's
environment: each recipe's native loss through `verl_call.call` (the function chapter 13 runs in verl's
environment) equals the lab's loss under the recipe's lab settings; verl's advantage estimators
(called as `ray_trainer.compute_advantage` calls them) gives the lab's advantages; the launch command of every recipe composes with
verl's own Hydra config into an actor config whose loss mode verl resolves; and installing the package makes
`import verl` register the lab's losses in any process (verl's plugin entry point)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import verl.trainer
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from verl.trainer.ppo import core_algos
from verl.utils.config import omega_conf_to_dataclass

from xxpo_lab.advantages import ADVANTAGES
from xxpo_lab.batch import Batch
from xxpo_lab.config import Config, resolve
from xxpo_lab.integrations.crosswalk import ACTOR, RECIPES, verl_actor_fields, verl_launch, verl_overrides
from xxpo_lab.integrations.verl_call import call
from xxpo_lab.losses import LOSSES

B, G, T = 8, 4, 5
F64 = torch.float64
VERL_RECIPES = [r for r in RECIPES if r.verl is not None]
NATIVE = [r for r in VERL_RECIPES if not r.verl.get("policy_loss.loss_mode", "vanilla").startswith("xxpo_")]


def data(seed: int, scale: float) -> dict:
    gen = torch.Generator().manual_seed(seed)
    mask = (torch.arange(T)[None] < torch.tensor([5, 3, 1, 4, 5, 2, 4, 5])[:, None]).to(F64)
    old = torch.log(torch.rand(B, T, generator=gen, dtype=F64) * 0.97 + 0.02)
    logp = torch.minimum(old + scale * torch.randn(B, T, generator=gen, dtype=F64), torch.full((B, T), -1e-3,
                                                                                              dtype=F64))
    adv = torch.tensor([1.2, -0.8, 0.3, -1.5, 0.6, -0.1, 0.9, -1.1], dtype=F64)[:, None] * mask
    return {"old": old, "logp": logp, "adv": adv, "mask": mask, "G": G}


def lab_cfg(r) -> Config:
    return resolve(Config(**(r.lab | r.verl_lab | {"task": "copy", "difficulty": 2, "T_max": T, "G": G})))


@pytest.mark.parametrize("scale", [0.05, 0.5])
@pytest.mark.parametrize("r", NATIVE, ids=lambda r: r.algorithm)
def test_verl_settings_give_the_lab_loss(r, scale):
    d = data(0, 0.02 if r.algorithm == "GSPO" else scale)  # verl clamps GSPO's log sequence ratio: keep it small
    theirs = call(d, verl_actor_fields(r, T))
    leaf = d["logp"].clone().requires_grad_(True)
    loss, _ = LOSSES[r.loss].fn(leaf, Batch.of(d["mask"], adv=d["adv"], prox_logp=d["old"], behav_logp=d["old"]),
                                lab_cfg(r))
    (grad,) = torch.autograd.grad(loss, leaf)
    torch.testing.assert_close(loss.item(), theirs["loss"], rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(grad, theirs["grad"], rtol=1e-6, atol=1e-9)
    assert theirs["grad"].abs().max() > 1e-4


@pytest.mark.parametrize("r", [r for r in VERL_RECIPES if r.verl.get("algorithm.adv_estimator") in ("grpo", "rloo")],
                         ids=lambda r: r.algorithm)
def test_verl_advantage_step_gives_the_lab_advantage(r):
    reward = torch.rand(B, generator=torch.Generator().manual_seed(1))
    mask = torch.ones(B, T)
    token_rewards = torch.zeros(B, T)
    token_rewards[:, -1] = reward
    uid = np.repeat(np.arange(B // G), G).astype(object)
    name = r.verl["algorithm.adv_estimator"]
    # as verl's trainer calls them (trainer.ppo.ray_trainer.compute_advantage, whose module needs a server stack)
    if name == "grpo":
        out, _ = core_algos.compute_grpo_outcome_advantage(
            token_level_rewards=token_rewards, response_mask=mask, index=uid,
            norm_adv_by_std_in_grpo=r.verl.get("algorithm.norm_adv_by_std_in_grpo", True))
    else:
        out, _ = core_algos.get_adv_estimator_fn(name)(token_level_rewards=token_rewards, response_mask=mask,
                                                       config=None, index=uid)
    cfg = lab_cfg(r)
    adv, _ = ADVANTAGES[r.lab["adv"]](Batch.of(mask, reward=reward, correct=reward > 0.5), cfg)
    torch.testing.assert_close(out, adv, rtol=1e-5, atol=1e-6)
    assert adv.abs().max() > 0.1


@pytest.mark.parametrize("r", RECIPES, ids=lambda r: r.algorithm)
def test_the_launch_command_composes_with_verls_config(r):
    overrides = verl_launch(r)
    with initialize_config_dir(config_dir=str(Path(verl.trainer.__file__).parent / "config"), version_base=None):
        conf = compose(config_name="ppo_trainer", overrides=overrides)
    actor = omega_conf_to_dataclass(conf.actor_rollout_ref.actor)
    mode = verl_overrides(r)[ACTOR + "policy_loss.loss_mode"] if r.verl is None else \
        r.verl.get("policy_loss.loss_mode", "vanilla")
    assert actor.policy_loss.loss_mode == mode
    assert core_algos.get_policy_loss_fn(mode) is not None
    assert conf.actor_rollout_ref.rollout.n == 8 and conf.actor_rollout_ref.actor.ppo_mini_batch_size == 64
    for key, value in verl_overrides(r, T_max=1024).items():
        assert OmegaConf.select(conf, key) == value, key


def test_importing_verl_registers_the_lab_losses_through_the_plugin_entry_point():
    code = ("import verl\nfrom verl.trainer.ppo import core_algos\n"
            "core_algos.get_policy_loss_fn('xxpo_a3po')\nprint('ok')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.stdout.strip() == "ok", done.stderr[-2000:]
