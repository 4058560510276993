"""Every lab loss in verl's policy-loss registry: after `import xxpo_lab.integrations.verl`,
`actor.policy_loss.loss_mode=xxpo_<name>` runs `xxpo_lab.LOSSES[<name>]` inside verl's actor.

verl calls a policy loss with (old_log_prob, log_prob, advantages, response_mask, loss_agg_mode, config,
rollout_is_weights) for each micro-batch. Here they become a lab Batch and Config:

    verl                                   the lab
    log_prob (with grad)                   logp
    old_log_prob                           prox_logp and behav_logp (verl passes no other log-probs)
    advantages [B, T], response_mask       adv (0 on padding), mask
    rollout_is_weights                     multiplies the advantage, as is_mode does (linear losses only)
    clip_ratio, clip_ratio_low/_high       eps_low, eps_high (DPPO: its thresholds, as verl reads them)
    clip_ratio_c                           dual_clip_c for the losses with a dual clip (verl's vanilla always
                                           applies it); the lab's DPPO truncates at 20, whatever clip_ratio_c
    tau_pos, tau_neg                       tau_pos, tau_neg
    loss_scale_factor (or the width T)     T_max, Dr. GRPO's constant normaliser, as verl's -norm mode
    rollout_n                              G

The aggregation rule: each lab loss keeps its own aggregation (`aggregation_of`: GRPO averages per response,
DAPO per token, ...), whatever `loss_agg_mode` says; when verl splits a batch across micro-batches or ranks
(`config.global_batch_info`), the micro-batch's loss is scaled by its share of the global batch (its tokens for a
token mean, its responses for a per-response mean) times dp_size, as verl's `agg_loss` does, so that the
micro-batches' gradients add up to the whole batch's. Metrics: verl's names (actor/pg_clipfrac, actor/ppo_kl,
actor/pg_clipfrac_lower) and the lab's glossary under xxpo/.

`pip install "xxpo-lab[verl]"`: verl 0.9.1 pins transformers below 5.11, so it lives in its own environment
(`make test-verl` builds it and runs tests/verl there).
"""

from __future__ import annotations

import torch

from xxpo_lab.batch import Batch
from xxpo_lab.config import Config
from xxpo_lab.diagnostics import loss_metrics
from xxpo_lab.integrations import require
from xxpo_lab.integrations.aggregation import aggregation_of
from xxpo_lab.loop import loss_of
from xxpo_lab.losses import LOSSES, get_loss

core_algos = require("verl.trainer.ppo.core_algos", "verl")

PREFIX = "xxpo_"
"""verl's loss_mode of the lab loss <name> is PREFIX + <name>."""


def lab_config(name: str, config, width: int) -> Config:
    """The lab Config of loss `name` from verl's actor config, for a micro-batch `width` tokens wide."""
    low = config.clip_ratio_low if config.clip_ratio_low is not None else config.clip_ratio
    high = config.clip_ratio_high if config.clip_ratio_high is not None else config.clip_ratio
    switches = get_loss(name).switches
    fields = {"loss": name, "task": "copy", "difficulty": 2,  # the lab's task is unused: verl scores responses
              "eps_low": low, "eps_high": high, "tau_pos": config.tau_pos, "tau_neg": config.tau_neg,
              "G": max(2, config.rollout_n), "T_max": max(3, config.loss_scale_factor or width),
              "dual_clip_c": config.clip_ratio_c if "dual_clip_c" in switches else 0.0}
    return Config(**fields)


def policy_loss(name: str):
    """verl's policy-loss function for the lab loss `name`."""
    spec, agg = get_loss(name), aggregation_of(name)

    def fn(old_log_prob, log_prob, advantages, response_mask, loss_agg_mode="token-mean", config=None,
           rollout_is_weights=None):
        mask = response_mask.to(log_prob.dtype)  # [B, T]
        adv = advantages * mask
        if rollout_is_weights is not None:
            if not spec.linear or spec.own_is or spec.prox == "recompute":
                raise ValueError(f"loss_mode={PREFIX}{name} cannot take verl's rollout_is_weights: the loss weights "
                                 "its tokens by the sampler itself or is not linear in the advantage; set "
                                 "algorithm.rollout_correction.rollout_is=null")
            adv = adv * rollout_is_weights
        b = Batch.of(mask, adv=adv, prox_logp=old_log_prob, behav_logp=old_log_prob,
                     version_gap=torch.ones(mask.shape[0], dtype=torch.long, device=mask.device))
        cfg = lab_config(name, config, mask.shape[-1])
        loss, info = loss_of(name, log_prob, b, cfg)
        loss = loss * _share(agg, mask, config.global_batch_info)
        logp = log_prob.detach()
        lab = loss_metrics(info, logp, mask)
        metrics = {"actor/pg_clipfrac": lab.get("clip/active_frac", 0.0),
                   "actor/ppo_kl": ((old_log_prob - logp) * mask).sum().item() / max(mask.sum().item(), 1.0),
                   "actor/pg_clipfrac_lower": lab.get("clip/dual_frac", 0.0)}
        return loss, metrics | {f"xxpo/{k}": v for k, v in lab.items()}

    fn.__name__ = fn.__qualname__ = f"compute_policy_loss_{PREFIX}{name}"
    fn.__doc__ = f"The lab's {name!r} loss ({spec.summary}) in verl's policy-loss signature."
    return fn


def _share(agg: str, mask: torch.Tensor, info: dict) -> float:
    """The micro-batch's share of the global batch times dp_size (1 when verl passes no global batch info)."""
    dp = info.get("dp_size", 1) or 1
    if agg == "token-mean":
        total = info.get("batch_num_tokens")
        return 1.0 if total is None else float(mask.sum()) / float(total) * dp
    total = info.get("global_batch_size")
    return 1.0 if total is None else float((mask.sum(-1) > 0).sum()) / float(total) * dp


def register() -> list[str]:
    """Register every lab loss under PREFIX + name in verl's POLICY_LOSS_REGISTRY; returns the names."""
    names = [PREFIX + name for name in LOSSES]
    for name in LOSSES:
        core_algos.register_policy_loss(PREFIX + name)(policy_loss(name))
    return names


REGISTERED = register()
"""The loss modes this import added to verl."""
