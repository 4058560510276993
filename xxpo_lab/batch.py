"""The data of one training step, as every loss, advantage and diagnostic sees it.

B = P·G sequences; rows i·G .. i·G+G-1 share prompt i (groups are contiguous). Everything a loss
touches is response-only [B, T]. Log-prob names are fixed: `logp` (current, with grad, never stored
here), `behav_logp` (the sampler), `prox_logp` (the trust-region anchor), `ref_logp` (KL reference).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch
from torch import Tensor


@dataclass
class Batch:
    prompt_ids: Tensor  # [B, L] long, left-padded
    prompt_mask: Tensor  # [B, L] long, 0 on left padding
    resp_ids: Tensor  # [B, T] long, pad after EOS
    mask: Tensor  # [B, T] float: 1 on tokens the loss counts (generated tokens incl. EOS)
    behav_logp: Tensor  # [B, T] log-probs recorded by the sampler
    lengths: Tensor  # [B] long, generated tokens incl. EOS
    truncated: Tensor  # [B] bool, no EOS within T_max
    version: Tensor  # [B] long, policy version (completed steps) that sampled the row
    reward: Tensor | None = None  # [B] float (after shaping)
    correct: Tensor | None = None  # [B] bool
    right_before_cut: Tensor | None = None  # [B] bool, truncated and right before the cut (scored 0 all the same)
    adv: Tensor | None = None  # [B, T] float, zero where mask is 0
    prox_logp: Tensor | None = None  # [B, T] the trust-region anchor
    exact_prox_logp: Tensor | None = None  # [B, T] the recomputed anchor, for measuring A-3PO's (measure_prox)
    ref_logp: Tensor | None = None  # [B, T] frozen reference, when beta > 0
    version_gap: Tensor | None = None  # [B] long, A-3PO's d = version being produced - behaviour version
    values: Tensor | None = None  # [B, T] (token critic) or [B] (prompt critic), at sampling time
    value_target: Tensor | None = None  # what the critic regresses on: returns [B, T] or reward [B]
    is_weight: Tensor | None = None  # [B, T] the mismatch correction π_prox/π_behav (is_mode), already folded into adv
    routes: Tensor | None = None  # [B, n_layer, L+T, k] long: experts the sampling policy chose (MoE policies)

    @classmethod
    def of(cls, mask: Tensor, **fields) -> Batch:
        """A Batch around a response mask [B, T], for code without real prompts (tests, the loss explorer,
        toy policies). Prompt and token ids are dummies, which no loss or advantage reads; behav_logp
        defaults to 0 (of the mask's dtype), lengths to the mask's row sums, truncated and version to 0.
        Any field can be given; a name that is not a field is a TypeError naming it."""
        B, T = mask.shape
        defaults = {"prompt_ids": torch.zeros(B, 1, dtype=torch.long), "prompt_mask": torch.ones(B, 1, dtype=torch.long),
                    "resp_ids": torch.zeros(B, T, dtype=torch.long), "behav_logp": torch.zeros(B, T, dtype=mask.dtype),
                    "lengths": mask.sum(-1).long(), "truncated": torch.zeros(B, dtype=torch.bool),
                    "version": torch.zeros(B, dtype=torch.long)}
        return cls(mask=mask, **(defaults | fields))

    @property
    def B(self) -> int:
        return self.resp_ids.shape[0]

    def rows(self, idx: Tensor) -> Batch:
        """The sub-batch of rows `idx` (a minibatch of whole groups)."""
        return replace(self, **{f.name: _take(getattr(self, f.name), idx) for f in fields(self)})

    def to(self, device) -> Batch:
        return replace(self, **{f.name: _move(getattr(self, f.name), device) for f in fields(self)})


def concat(parts: list[Batch], pad_id: int) -> Batch:
    """Stack batches of groups into one: prompts left-padded, responses right-padded to common lengths."""
    L = max(p.prompt_ids.shape[1] for p in parts)
    T = max(p.resp_ids.shape[1] for p in parts)

    def pad(x, value, left=False):
        missing = (L if left else T) - x.shape[1]
        return torch.nn.functional.pad(x, (missing, 0) if left else (0, missing), value=value)

    return Batch(
        prompt_ids=torch.cat([pad(p.prompt_ids, pad_id, left=True) for p in parts]),
        prompt_mask=torch.cat([pad(p.prompt_mask, 0, left=True) for p in parts]),
        resp_ids=torch.cat([pad(p.resp_ids, pad_id) for p in parts]),
        mask=torch.cat([pad(p.mask, 0.0) for p in parts]),
        behav_logp=torch.cat([pad(p.behav_logp, 0.0) for p in parts]),
        **{name: torch.cat([getattr(p, name) for p in parts])
           for name in ("lengths", "truncated", "version", "reward", "correct", "right_before_cut")},
    )


def _take(x, idx):
    return x[idx] if isinstance(x, Tensor) else x


def _move(x, device):
    return x.to(device) if isinstance(x, Tensor) else x


def group_rows(P: int, G: int, minibatches: int, gen: torch.Generator) -> list[Tensor]:
    """Row indices of `minibatches` minibatches, each a random set of whole groups."""
    order = torch.randperm(P, generator=gen)  # shuffle groups, never split one
    per = P // minibatches
    return [(order[k * per:(k + 1) * per, None] * G + torch.arange(G)).reshape(-1) for k in range(minibatches)]
