"""verl's own policy losses on tensors from another process (ch. 13), run in verl's environment:

    python -m xxpo_lab.integrations.verl_call IN OUT

IN (torch.save) holds old, logp, adv [B, T], mask [B, T], G and `calls`: a list of (name, fields), where
fields are verl actor settings as the crosswalk writes them (`policy_loss.loss_mode`, `loss_agg_mode`,
`clip_ratio_low`, ...). Each call builds verl's actor config (`FSDPActorConfig`) from its fields and calls
`core_algos.get_policy_loss_fn(loss_mode)` as verl's actor does. OUT gets {name: {"loss", "grad", "metrics"}}
with grad = d loss / d logp [B, T]: the caller backpropagates it through its own policy, as verl's actor
would through its model. A loss_mode xxpo_<name> runs the lab's loss through `xxpo_lab.integrations.verl`.
"""

from __future__ import annotations

import sys

import torch


def call(data: dict, fields: dict):
    """verl's loss, d loss / d logp and metrics for one call."""
    from verl.trainer.ppo import core_algos
    from verl.workers.config import FSDPActorConfig

    fields = dict(fields)
    mode = fields.pop("policy_loss.loss_mode", "vanilla")
    agg = fields.pop("loss_agg_mode", "token-mean")
    B = data["logp"].shape[0]
    config = FSDPActorConfig(strategy="fsdp", rollout_n=data["G"], ppo_mini_batch_size=B,
                             ppo_micro_batch_size_per_gpu=B, policy_loss={"loss_mode": mode}, loss_agg_mode=agg,
                             **fields)
    # as verl's actor loss (workers.utils.losses.ppo_loss) does before calling the policy loss: one data-parallel
    # rank holding the whole batch, and the actor's constant normaliser for seq-mean-token-sum-norm
    config.global_batch_info.update(dp_size=1, batch_num_tokens=None, global_batch_size=None,
                                    loss_scale_factor=config.loss_scale_factor)
    leaf = data["logp"].clone().requires_grad_(True)
    loss, metrics = core_algos.get_policy_loss_fn(mode)(
        old_log_prob=data["old"], log_prob=leaf, advantages=data["adv"], response_mask=data["mask"],
        loss_agg_mode=agg, config=config, rollout_is_weights=None)
    (grad,) = torch.autograd.grad(loss, leaf)
    return {"loss": loss.item(), "grad": grad, "metrics": {k: float(v) for k, v in metrics.items()}}


def main(src: str, dst: str) -> None:
    import xxpo_lab.integrations.verl  # noqa: F401  (registers loss_mode=xxpo_<name>)

    data = torch.load(src)
    torch.save({name: call(data, fields) for name, fields in data["calls"]}, dst)


if __name__ == "__main__":
    main(*sys.argv[1:])
