"""Sampling responses with a KV cache, and scoring them with the task's verifier.

The sampler records `behav_logp` at sample time, with the same temperature and the same token
alignment the learner uses (`policy.token_logp`), so the two agree to float precision (a test says
so). Randomness comes only from an explicit `torch.Generator`.
"""

from __future__ import annotations

import torch
from torch import Tensor
from transformers import DynamicCache

from xxpo_lab.tasks import Problem, Task


def positions(attention_mask: Tensor) -> Tensor:
    """Position ids that skip left padding, so a padded prompt is seen as if it started at 0."""
    return (attention_mask.cumsum(-1) - 1).clamp(min=0)


@torch.no_grad()
def sample(model, prompt_ids: Tensor, prompt_mask: Tensor, T: int, temperature: float, gen: torch.Generator,
           eos_id: int, pad_id: int):
    """Sample one response per prompt row, up to T tokens, stopping at EOS.

    Args: prompt_ids, prompt_mask [B, L] (left-padded); T the maximum response length.
    Returns: resp_ids [B, T] (pad after EOS), mask [B, T] float (1 on generated tokens incl. EOS),
    behav_logp [B, T] (0 on padding), lengths [B] long, truncated [B] bool (no EOS within T).
    """
    B = prompt_ids.shape[0]
    device = prompt_ids.device
    cache = DynamicCache()
    attn = prompt_mask
    pos = positions(prompt_mask)[:, -1:]  # [B, 1] position of the last prompt token
    # the cache is the second positional argument in transformers 4.x (past_key_values) and 5.x (cache)
    logits = model(prompt_ids, cache, attention_mask=attn, position_ids=positions(prompt_mask), use_cache=True).logits
    resp = torch.full((B, T), pad_id, dtype=torch.long, device=device)
    logp = torch.zeros(B, T, device=device)
    mask = torch.zeros(B, T, device=device)
    done = torch.zeros(B, dtype=torch.bool, device=device)
    for t in range(T):
        step_logp = torch.log_softmax(logits[:, -1].float() / temperature, dim=-1)  # [B, V]
        token = torch.multinomial(step_logp.exp(), 1, generator=gen).squeeze(-1)  # [B]
        alive = ~done
        resp[:, t] = torch.where(alive, token, pad_id)
        logp[:, t] = torch.where(alive, step_logp.gather(-1, token[:, None]).squeeze(-1), 0.0)
        mask[:, t] = alive.float()
        done = done | (token == eos_id)
        if bool(done.all()) or t == T - 1:
            break
        attn = torch.cat([attn, torch.ones_like(attn[:, :1])], dim=1)
        pos = pos + 1
        logits = model(resp[:, t:t + 1], cache, attention_mask=attn, position_ids=pos, use_cache=True).logits
    lengths = mask.sum(-1).long()
    truncated = ~done
    return resp, mask, logp, lengths, truncated


def decode(tokenizer, resp_ids: Tensor, lengths: Tensor, truncated: Tensor) -> list[str]:
    """Response texts without the EOS token."""
    keep = (lengths - (~truncated).long()).tolist()  # drop EOS when present
    rows = resp_ids.tolist()
    return tokenizer.batch_decode([row[:n] for row, n in zip(rows, keep)])


def score(task: Task, tokenizer, problems: list[Problem], resp_ids: Tensor, lengths: Tensor,
          truncated: Tensor) -> Tensor:
    """Verify each response against its problem. Returns correct [B] bool (on the CPU)."""
    texts = decode(tokenizer, resp_ids.cpu(), lengths.cpu(), truncated.cpu())
    return torch.tensor([task.verify(p, s, bool(tr)) for p, s, tr in zip(problems, texts, truncated.tolist())])
