"""Critics: PPO's token-level value model and Sequence-Level PPO's prompt-only value.

A critic is a separate copy of the policy's transformer with a scalar head, so its memory and time
show up as PPO's cost (chapter 2). The value losses are pure functions.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from xxpo_lab.rollout import positions


class Critic(nn.Module):
    """A transformer trunk and a linear value head.

    kind='token': V(s_t) for the state before each response token, [B, T] (PPO with GAE).
    kind='prompt': one logit per prompt from its last token, [B] (Sequence-Level PPO).
    """

    def __init__(self, trunk: nn.Module, width: int, kind: str):
        super().__init__()
        assert kind in ("token", "prompt"), kind
        self.trunk, self.kind = trunk, kind
        self.head = nn.Linear(width, 1)
        nn.init.zeros_(
            self.head.weight
        )  # start from V = 0: no opinion before the first update
        nn.init.zeros_(self.head.bias)

    def forward(
        self, prompt_ids: Tensor, prompt_mask: Tensor, resp_ids: Tensor
    ) -> Tensor:
        L = prompt_ids.shape[1]
        if self.kind == "prompt":
            hidden = self.trunk(
                input_ids=prompt_ids,
                attention_mask=prompt_mask,
                position_ids=positions(prompt_mask),
            ).last_hidden_state
            return self.head(hidden[:, -1]).squeeze(
                -1
            )  # [B]: prompts are left-padded, the last token is real
        x = torch.cat([prompt_ids, resp_ids], dim=1)
        attn = torch.cat([prompt_mask, torch.ones_like(resp_ids)], dim=1)
        hidden = self.trunk(
            input_ids=x, attention_mask=attn, position_ids=positions(attn)
        ).last_hidden_state
        return self.head(hidden[:, L - 1 : -1]).squeeze(
            -1
        )  # [B, T], aligned with token_logp


def make_critic(policy: nn.Module, kind: str) -> Critic:
    """A critic initialised from the (warm-started) policy's transformer, as RLHF inits from a trained model."""
    return (
        Critic(copy.deepcopy(policy.base_model), policy.config.hidden_size, kind)
        .to(policy.device)
        .eval()
    )


def value_loss(
    values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor, eps_value: float
):
    """PPO's clipped value loss: ½·max((V - R̂)², (V_old + clip(V - V_old, ±eps_value) - R̂)²), token-mean.

    Value clipping comes from OpenAI baselines' ppo2, not the PPO paper; TRL uses eps_value 0.2
    (`cliprange_value`), verl 0.5. Args: [B, T] each. Returns: (loss, clipped [B, T] bool). Book: ch. 1.
    """
    assert values.shape == old_values.shape == returns.shape == mask.shape
    clipped_values = old_values + torch.clamp(
        values - old_values, -eps_value, eps_value
    )
    loss_bt = 0.5 * torch.maximum(
        (values - returns) ** 2, (clipped_values - returns) ** 2
    )
    n = mask.sum().clamp(min=1.0)
    clipped = ((clipped_values - returns) ** 2 > (values - returns) ** 2).detach()
    return (loss_bt * mask).sum() / n, clipped


def prompt_value_loss(logit: Tensor, reward: Tensor) -> Tensor:
    """Sequence-Level PPO's critic loss: BCE of σ(V(x)) against R ∈ {0, 1}. Args: [B] each. """
    assert logit.shape == reward.shape
    return nn.functional.binary_cross_entropy_with_logits(logit, reward.float())
