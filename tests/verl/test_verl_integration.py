"""xxpo_lab.integrations.verl against verl's own code (verl 0.9.1, requirements-verl.txt), run by `make test-verl`
in verl's environment: verl's registry and `get_policy_loss_fn`, verl's loss functions on the same tensors, and
verl's actor loss `workers.utils.losses.ppo_loss` with verl's own config class."""

from __future__ import annotations

import pytest
import torch
from verl.trainer.ppo import core_algos
from verl.workers.config import FSDPActorConfig

import xxpo_lab.integrations.verl as integration
from xxpo_lab import LOSSES

B, T = 6, 5
F64 = torch.float64


def actor(**changes) -> FSDPActorConfig:
    """verl's own actor config (FSDP), as a verl run builds it."""
    return FSDPActorConfig(strategy="fsdp", rollout_n=3, ppo_micro_batch_size_per_gpu=B, ppo_mini_batch_size=B,
                           **changes)


def data(seed: int = 0, scale: float = 0.5):
    gen = torch.Generator().manual_seed(seed)
    mask = (torch.arange(T)[None] < torch.tensor([5, 3, 1, 4, 5, 2])[:, None])
    old = torch.log(torch.rand(B, T, generator=gen, dtype=F64) * 0.97 + 0.02)
    logp = torch.minimum(old + scale * torch.randn(B, T, generator=gen, dtype=F64), torch.full((B, T), -1e-3,
                                                                                              dtype=F64))
    adv = torch.tensor([1.2, -0.8, 0.3, -1.5, 0.6, -0.1], dtype=F64)[:, None].expand(B, T) * mask
    return old, logp, adv, mask


def call(fn, old, logp, adv, mask, config, agg="token-mean", weights=None):
    leaf = logp.clone().requires_grad_(True)
    loss, metrics = fn(old_log_prob=old, log_prob=leaf, advantages=adv, response_mask=mask, loss_agg_mode=agg,
                       config=config, rollout_is_weights=weights)
    (grad,) = torch.autograd.grad(loss, leaf)
    return loss.detach(), grad, metrics


def test_every_lab_loss_is_in_verls_registry():
    assert integration.REGISTERED == [f"xxpo_{name}" for name in LOSSES]
    for name in LOSSES:
        assert core_algos.get_policy_loss_fn(f"xxpo_{name}").__name__ == f"compute_policy_loss_xxpo_{name}"
    with pytest.raises(ValueError, match=r"Unsupported loss mode: xxpo_ppo2\. Supported modes are: .*'xxpo_grpo'"):
        core_algos.get_policy_loss_fn("xxpo_ppo2")  # verl's own message names the value and every mode


# (lab loss, verl loss_mode, verl loss_agg_mode, actor config changes)
PAIRS = [
    ("ppo", "vanilla", "token-mean", {}),  # verl's vanilla always dual-clips at clip_ratio_c = 3
    ("ppo", "vanilla", "token-mean", {"clip_ratio_low": 0.2, "clip_ratio_high": 0.28, "clip_ratio_c": 2.0}),
    ("grpo", "vanilla", "seq-mean-token-mean", {}),
    ("sapo", "sapo", "seq-mean-token-mean", {}),
    ("sapo", "sapo", "seq-mean-token-mean", {"tau_pos": 4.0, "tau_neg": 0.5}),
    ("cispo", "cispo", "token-mean", {"clip_ratio_low": 1.0, "clip_ratio_high": 4.0}),
    ("gmpo", "geo_mean", "seq-mean-token-mean", {"clip_ratio_low": 0.4, "clip_ratio_high": 0.4}),
    ("dppo_tv", "dppo_tv", "token-mean", {"clip_ratio": 0.15, "clip_ratio_c": 20.0}),
    ("dppo_kl", "dppo_kl", "token-mean", {"clip_ratio": 0.05, "clip_ratio_c": 20.0}),
]


GSPO = ("gspo", "gspo", "seq-mean-token-mean", {"clip_ratio_low": 3e-4, "clip_ratio_high": 4e-4})
CASES = [(*pair, scale) for pair in PAIRS for scale in (0.05, 0.5)] + [(*GSPO, 0.05)]  # verl clamps GSPO's log
# sequence ratio at 10: the two agree below it, which small moves keep


@pytest.mark.parametrize("lab,mode,agg,changes,scale", CASES)
def test_the_lab_loss_through_verl_equals_verls_own(lab, mode, agg, changes, scale):
    old, logp, adv, mask = data(scale=scale)
    config = actor(**changes)
    theirs = call(core_algos.get_policy_loss_fn(mode), old, logp, adv, mask, config, agg)
    ours = call(core_algos.get_policy_loss_fn(f"xxpo_{lab}"), old, logp, adv, mask, config, agg)
    torch.testing.assert_close(ours[0], theirs[0], rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(ours[1], theirs[1], rtol=1e-6, atol=1e-9)
    assert theirs[1].abs().max() > 1e-4
    if mode == "vanilla":
        assert ours[2]["actor/pg_clipfrac"] == pytest.approx(theirs[2]["actor/pg_clipfrac"])


def test_rollout_is_weights_multiply_each_tokens_loss_as_in_verl():
    old, logp, adv, mask = data()
    weights = torch.rand(B, T, generator=torch.Generator().manual_seed(3), dtype=F64) * 2
    theirs = call(core_algos.get_policy_loss_fn("sapo"), old, logp, adv, mask, actor(), "seq-mean-token-mean",
                  weights)
    ours = call(core_algos.get_policy_loss_fn("xxpo_sapo"), old, logp, adv, mask, actor(), weights=weights)
    torch.testing.assert_close(ours[1], theirs[1], rtol=1e-6, atol=1e-9)
    with pytest.raises(ValueError, match=r"loss_mode=xxpo_vespo cannot take verl's rollout_is_weights"):
        call(core_algos.get_policy_loss_fn("xxpo_vespo"), old, logp, adv, mask, actor(), weights=weights)


@pytest.mark.parametrize("lab", ["dapo", "grpo", "dr_grpo", "luspo"])
def test_micro_batches_add_up_to_the_whole_batch(lab):
    """With verl's global batch info, the gradients of two micro-batches sum to the whole batch's gradient."""
    old, logp, adv, mask = data()
    fn = core_algos.get_policy_loss_fn(f"xxpo_{lab}")
    whole = call(fn, old, logp, adv, mask, actor(loss_scale_factor=T))[1]
    parts = []
    for rows in (slice(0, 2), slice(2, B)):
        config = actor(loss_scale_factor=T)
        config.global_batch_info.update(dp_size=1, batch_num_tokens=int(mask.sum()), global_batch_size=B)
        parts.append(call(fn, old[rows], logp[rows], adv[rows], mask[rows], config)[1])
    torch.testing.assert_close(torch.cat(parts), whole, rtol=1e-9, atol=1e-12)


def test_verls_actor_loss_runs_a_lab_loss():
    """verl's own actor loss (`workers.utils.losses.ppo_loss`: unpadding, registry lookup, metrics) with
    loss_mode=xxpo_grpo and verl's config class gives the lab's GRPO loss and gradient (no entropy or KL term)."""
    from tensordict import TensorDict
    from verl.utils import tensordict_utils as tu
    from verl.workers.utils import losses as verl_losses

    old, logp, adv, mask = data()
    config = actor(policy_loss={"loss_mode": "xxpo_grpo"}, entropy_coeff=0.0, use_kl_loss=False)
    Lp = 3  # prompt tokens
    lengths = mask.sum(-1)
    leaf = logp.clone().requires_grad_(True)
    # verl's model output: one flat vector of log-probs over all (prompt + response) tokens, each response
    # token's log-prob at the position that predicts it (prompt_len - 1 + t)
    flat = torch.cat([torch.cat([torch.zeros(Lp - 1, dtype=F64), leaf[i, : lengths[i]], torch.zeros(1, dtype=F64)])
                      for i in range(B)])
    batch = TensorDict({"prompts": torch.ones(B, Lp, dtype=torch.long), "responses": torch.ones(B, T, dtype=torch.long),
                        "attention_mask": torch.cat([torch.ones(B, Lp, dtype=torch.long), mask.long()], dim=1),
                        "response_mask": mask, "old_log_probs": old, "advantages": adv}, batch_size=[B])
    tu.assign_non_tensor(batch, dp_size=1, batch_num_tokens=None, global_batch_size=None)
    loss, metrics = verl_losses.ppo_loss(config, {"log_probs": flat}, batch)
    (grad,) = torch.autograd.grad(loss, leaf)
    expected, expected_grad, _ = call(core_algos.get_policy_loss_fn("xxpo_grpo"), old, logp, adv, mask, actor())
    torch.testing.assert_close(loss.detach(), expected)
    torch.testing.assert_close(grad, expected_grad)
    assert "actor/pg_clipfrac" in metrics
