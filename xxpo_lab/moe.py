"""Mixture-of-experts routing: which experts each token was sent to, Routing Replay, and route drift.

A Mixtral block sends each token to the top-k of its experts by the router's probabilities. After one
gradient step some tokens pick other experts, so π_θ and π_old of the same token are computed by
different sub-networks and token ratios swing (the GSPO paper's argument, arXiv 2507.18071 §5.3). Routing
Replay reuses the old policy's expert choices in the learner's forward; the router still weights the
chosen experts by its current probabilities, so it keeps learning. Book: ch. 5.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import Tensor


def moe_blocks(model) -> list[torch.nn.Module]:
    """The sparse-MoE blocks of a mixture-of-experts policy, one per layer; [] for a dense model."""
    return [m for m in model.modules() if type(m).__name__ == "MixtralSparseMoeBlock"]


@contextmanager
def routing(model, replay: Tensor | None = None):
    """Record (and optionally replay) the experts chosen in every forward of `model`.

    Yields a list that receives, per forward, the experts the routers chose:
    [N, n_layer, S, k] long for N sequences of S positions. With `replay` (same
    shape) the routers use those experts instead, weighted by the router's current
    softmax renormalised over them (Mixtral's own weighting), and what the routers
    would have chosen is still recorded. A dense model records nothing.
    """
    blocks, chosen, layers, shapes = moe_blocks(model), [], {}, {}

    def keep_shape(i: int):
        def fn(block, args):
            shapes[i] = args[0].shape[:2]  # (N, S): the router sees N·S rows
        return fn

    def route(i: int):
        def fn(router, args, output):
            logits, scores, indices = output  # [N·S, E], [N·S, k], [N·S, k]
            layers[i] = indices.view(*shapes[i], -1)
            if len(layers) == len(blocks):
                stacked = [layers.pop(j) for j in range(len(blocks))]
                chosen.append(torch.stack(stacked, dim=1))
            if replay is None:
                return output
            forced = replay[:, i].reshape(indices.shape)  # sampling's experts
            w = torch.softmax(logits.float(), dim=-1).gather(-1, forced)
            w = (w / w.sum(-1, keepdim=True)).to(scores.dtype)
            return logits, w, forced
        return fn

    handles = []
    for i, block in enumerate(blocks):
        handles.append(block.register_forward_pre_hook(keep_shape(i)))
        handles.append(block.gate.register_forward_hook(route(i)))
    try:
        yield chosen
    finally:
        for h in handles:
            h.remove()


def route_drift(now: Tensor, before: Tensor, mask: Tensor) -> Tensor:
    """Share of (response token, layer) pairs whose set of chosen experts differs between two forwards.

    The positions counted are those whose output predicts a response token (the last prompt position and the
    response's own positions but the last), where mask is 1. Args: now, before [B, n_layer, L+T, k] long;
    mask [B, T]. Returns: a scalar tensor in [0, 1].
    """
    T = mask.shape[1]
    changed = (now.sort(-1).values != before.sort(-1).values).any(-1)  # [B, n_layer, L+T]
    changed = changed[:, :, -T - 1:-1].float()  # [B, n_layer, T] positions predicting resp_0 .. resp_{T-1}
    m = mask[:, None, :].expand_as(changed)
    return (changed * m).sum() / m.sum().clamp(min=1.0)
