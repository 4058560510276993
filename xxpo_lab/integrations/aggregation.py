"""Which aggregation a registered loss applies, read off the loss itself (for engines that split a batch).

An engine that cuts a batch into micro-batches (verl) must know whether a loss averages over tokens or over
sequences to make the micro-batches add up to the batch's loss. Rather than a second table that could drift
from the code, `aggregation_of` asks the loss: on-policy (r = 1) every linear loss's gradient on token t of
response i is -A_i times the aggregation's weight, and the four weights differ on responses of different
lengths.
"""

from __future__ import annotations

from functools import cache

import torch

from xxpo_lab.batch import Batch
from xxpo_lab.config import Config, resolve
from xxpo_lab.losses import get_loss

LENGTHS, T_MAX = (1, 2, 3, 4), 6
BY_DEFINITION = {"self_play_po": "seq-mean-token-mean"}
"""Losses whose gradient cannot show their aggregation: Self-Play PO regresses one number per response (the sum
of its log-ratios), so every token of a response gets the same gradient whatever the mode; it averages over
responses (a test checks its value)."""
ADV = (1.0, -2.0, 0.5, 3.0)


def _weights(mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """Each aggregation mode's weight on each token ([B, T]), as `blocks.aggregate` applies it."""
    B, lengths = mask.shape[0], mask.sum(-1, keepdim=True)
    return {"token-mean": mask / mask.sum(), "seq-mean-token-mean": mask / (B * lengths),
            "seq-mean-token-sum": mask / B, "seq-mean-token-sum-norm": mask / (B * T_MAX)}


@cache
def aggregation_of(name: str) -> str:
    """The `blocks.AGG_MODES` entry the loss `name` applies: the mode whose token weights its on-policy
    gradient equals (the one mode it is proportional to, if none is equal). Fails when none or several fit."""
    if name in BY_DEFINITION:
        return BY_DEFINITION[name]
    T = max(LENGTHS)
    mask = (torch.arange(T)[None] < torch.tensor(LENGTHS)[:, None]).double()  # [B, T]
    adv = torch.tensor(ADV, dtype=torch.float64)[:, None] * mask
    anchor = torch.log(torch.linspace(0.2, 0.8, len(LENGTHS) * T, dtype=torch.float64)).view(len(LENGTHS), T)
    b = Batch.of(mask, adv=adv, prox_logp=anchor, behav_logp=anchor,
                 version_gap=torch.ones(len(LENGTHS), dtype=torch.long))
    logp = anchor.clone().requires_grad_(True)  # on-policy: r = 1 on every token
    loss, _ = get_loss(name).fn(logp, b, resolve(Config(loss=name, T_max=T_MAX)))
    (grad,) = torch.autograd.grad(loss, logp)
    valid = mask > 0
    factors = {mode: grad[valid] / (-adv * weight)[valid] for mode, weight in _weights(mask).items()}
    exact = [m for m, f in factors.items() if torch.allclose(f, torch.ones_like(f), rtol=1e-9)]
    scaled = [m for m, f in factors.items() if torch.allclose(f, f[0].expand_as(f), rtol=1e-9) and f[0] > 0]
    found = exact or scaled  # a scaled match is only trusted when it is the one shape that fits
    if len(found) != 1:
        raise ValueError(f"loss {name!r}: its on-policy gradient matches {found or 'no'} aggregation mode(s)")
    return found[0]
