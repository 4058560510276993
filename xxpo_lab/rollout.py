"""Sampling responses with a KV cache, and scoring them with the task's verifier.

The sampler records `behav_logp` at sample time, with the same temperature and the same token
alignment the learner uses (`policy.token_logp`), so the two agree to float precision (a test says
so). Randomness comes only from an explicit `torch.Generator`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from xxpo_lab.mismatch import filter_logp
from xxpo_lab.tasks import Problem, Task


def positions(attention_mask: Tensor) -> Tensor:
    """Position ids that skip left padding, so a padded prompt is seen as if it started at 0."""
    return (attention_mask.cumsum(-1) - 1).clamp(min=0)


@torch.no_grad()
def sample(model, prompt_ids: Tensor, prompt_mask: Tensor, T: int, temperature: float, gen: torch.Generator,
           eos_id: int, pad_id: int, lean: bool = True, top_p: float = 1.0, top_k: int = 0):
    """Sample one response per prompt row, up to T tokens, stopping at EOS.

    Args: prompt_ids, prompt_mask [B, L] (left-padded); T the maximum response length; lean=False forces
    the transformers forward instead of `Gpt2Decoder` (a test checks they sample the same tokens);
    top_p, top_k: the sampler draws from the filtered distribution (`mismatch.filter_logp`) and records
    its log-probs, which the trainer's do not match (ch. 10).
    Returns: resp_ids [B, T] (pad after EOS), mask [B, T] float (1 on generated tokens incl. EOS),
    behav_logp [B, T] (0 on padding), lengths [B] long, truncated [B] bool (no EOS within T).
    """
    B, L = prompt_ids.shape
    device = prompt_ids.device
    step = Gpt2Decoder(model, B, L + T) if lean and Gpt2Decoder.fits(model) else HfDecoder(model)
    attn = prompt_mask
    pos = positions(prompt_mask)[:, -1:]  # [B, 1] position of the last prompt token
    logits = step(prompt_ids, positions(prompt_mask), attn)  # [B, V] next-token logits
    resp = torch.full((B, T), pad_id, dtype=torch.long, device=device)
    logp = torch.zeros(B, T, device=device)
    mask = torch.zeros(B, T, device=device)
    done = torch.zeros(B, dtype=torch.bool, device=device)
    for t in range(T):
        step_logp = filter_logp(torch.log_softmax(logits.float() / temperature, dim=-1), top_p, top_k)  # [B, V]
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
        logits = step(resp[:, t:t + 1], pos, attn)
    lengths = mask.sum(-1).long()
    truncated = ~done
    return resp, mask, logp, lengths, truncated


def logp_noise(mask: Tensor, sigma: float, rho: float, gen: torch.Generator) -> Tensor:
    """Gaussian noise for recorded log-probs, AR(1) along each response: n_0 = σ·ε_0,
    n_t = ρ·n_{t-1} + σ·√(1-ρ²)·ε_t, so every token has std σ and neighbours correlate by ρ (ρ = 0: i.i.d.).
    The mean over a length-n response then has std σ/√n at ρ = 0 and stays near σ as ρ → 1.
    Args: mask [B, T]; gen draws ε on mask's device. Returns: noise [B, T], 0 on padding. Book: ch. 5.
    """
    eps = torch.randn(mask.shape, generator=gen, device=mask.device)  # [B, T]
    noise = torch.empty_like(eps)
    noise[:, 0] = eps[:, 0]
    for t in range(1, mask.shape[1]):
        noise[:, t] = rho * noise[:, t - 1] + (1 - rho**2) ** 0.5 * eps[:, t]
    return sigma * noise * mask


class HfDecoder:
    """Next-token logits from any transformers causal LM, with its KV cache."""

    def __init__(self, model):
        import inspect

        from transformers import DynamicCache

        self.model, self.cache = model, DynamicCache()
        # the cache argument is `cache` in transformers 5.x and `past_key_values` in 4.x
        self.cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"

    def __call__(self, ids: Tensor, pos: Tensor, attn: Tensor) -> Tensor:
        return self.model(ids, attention_mask=attn, position_ids=pos, use_cache=True,
                          **{self.cache_arg: self.cache}).logits[:, -1]


class Gpt2Decoder:
    """The same GPT-2 forward, written on the model's own weights with a preallocated KV cache.

    Sampling a few tokens from a tiny model is dominated by per-call overhead (module stack, mask
    building, cache bookkeeping), not arithmetic; this decoder removes it (about 1.7x faster sampling
    here, benchmarks/README.md). It is only used for plain GPT-2 configs (`fits`); everything else,
    and the learner's log-probs, go through transformers. A test checks both paths sample the same
    tokens with the same log-probs.
    """

    def __init__(self, model, B: int, S: int):
        cfg, self.tr, self.head = model.config, model.transformer, model.lm_head.weight
        self.d, self.H, self.eps = cfg.n_embd, cfg.n_head, cfg.layer_norm_epsilon
        w = self.head
        self.cache = [(w.new_empty(B, self.H, S, self.d // self.H), w.new_empty(B, self.H, S, self.d // self.H))
                      for _ in self.tr.h]
        self.filled = 0

    @staticmethod
    def fits(model) -> bool:
        from transformers import GPT2LMHeadModel

        if not isinstance(model, GPT2LMHeadModel):
            return False
        cfg = model.config
        return (cfg.activation_function in ("gelu_new", "gelu_pytorch_tanh")
                and cfg.scale_attn_weights and not cfg.scale_attn_by_inverse_layer_idx
                and not cfg.reorder_and_upcast_attn and not cfg.add_cross_attention)

    def __call__(self, ids: Tensor, pos: Tensor, attn: Tensor) -> Tensor:
        B, n = ids.shape
        s0, s1 = self.filled, self.filled + n
        keys = attn.bool()[:, None, None, :s1]  # [B, 1, 1, s1]: no left padding
        if n > 1:  # the prompt: causal, and padded rows attend to themselves (a row of zeros gives NaN)
            causal = torch.ones(n, n, dtype=torch.bool, device=ids.device).tril()
            keys = (causal[None, None] & keys) | torch.eye(n, dtype=torch.bool, device=ids.device)
        h = self.tr.wte(ids) + self.tr.wpe(pos)  # [B, n, d]
        for blk, (K, V) in zip(self.tr.h, self.cache):
            h = self._block(blk, h, K, V, s0, s1, keys)
        self.filled = s1
        h = F.layer_norm(h[:, -1], (self.d,), self.tr.ln_f.weight, self.tr.ln_f.bias, self.eps)
        return h @ self.head.T  # [B, V]

    def _block(self, blk, h, K, V, s0, s1, keys):
        B, n, d, H = *h.shape[:2], self.d, self.H
        a = F.layer_norm(h, (d,), blk.ln_1.weight, blk.ln_1.bias, self.eps).reshape(-1, d)
        q, k, v = torch.addmm(blk.attn.c_attn.bias, a, blk.attn.c_attn.weight).view(B, n, 3, H, d // H).permute(
            2, 0, 3, 1, 4)  # each [B, H, n, d/H]
        K[:, :, s0:s1], V[:, :, s0:s1] = k, v
        o = F.scaled_dot_product_attention(q, K[:, :, :s1], V[:, :, :s1], attn_mask=keys)
        h = h + torch.addmm(blk.attn.c_proj.bias, o.transpose(1, 2).reshape(-1, d), blk.attn.c_proj.weight).view(B, n, d)
        m = F.layer_norm(h, (d,), blk.ln_2.weight, blk.ln_2.bias, self.eps).reshape(-1, d)
        m = F.gelu(torch.addmm(blk.mlp.c_fc.bias, m, blk.mlp.c_fc.weight), approximate="tanh")  # GPT-2's gelu_new
        return h + torch.addmm(blk.mlp.c_proj.bias, m, blk.mlp.c_proj.weight).view(B, n, d)


def decode(tokenizer, resp_ids: Tensor, lengths: Tensor, truncated: Tensor) -> list[str]:
    """Response texts without the EOS token."""
    keep = (lengths - (~truncated).long()).tolist()  # drop EOS when present
    rows = resp_ids.tolist()
    return tokenizer.batch_decode([row[:n] for row, n in zip(rows, keep)])


def score(task: Task, tokenizer, problems: list[Problem], resp_ids: Tensor, lengths: Tensor,
          truncated: Tensor, before_cut: bool = False) -> Tensor:
    """Verify each response against its problem. Returns correct [B] bool (on the CPU). `before_cut`: judge
    a truncated response by the answer it wrote before the cut, as a longer T_max might have (ch. 4)."""
    texts = decode(tokenizer, resp_ids.cpu(), lengths.cpu(), truncated.cpu())
    return torch.tensor([task.verify(p, s, bool(tr) and not before_cut)
                         for p, s, tr in zip(problems, texts, truncated.tolist())])
