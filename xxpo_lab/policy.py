"""Policies: a GPT-2 or a small mixture of experts built from the config (or a pretrained causal LM), the
learner's log-probs, and the supervised warm start that gives RL a non-zero success rate.

Dropout is never active (models stay in eval mode; gradients flow all the same), so the learner's
log-probs equal the sampler's. Warm-started weights are cached on disk, keyed by everything that
shapes them, so every chapter that uses the same starting policy trains it once.
"""

from __future__ import annotations

import os
import random
import time
from contextlib import contextmanager

import torch
from torch import Tensor

from xxpo_lab.codekey import code_hash
from xxpo_lab.rollout import positions, sample, score
from xxpo_lab.store import cache_dir, check_meta, key_of, load_torch, save_torch
from xxpo_lab.tasks import Problem, Task, char_tokenizer, make_task

N_POSITIONS = 160
"""Positions of the built GPT-2 (prompt + response); the config caps T_max well below it."""
MODEL_TYPES = ("gpt2", "mixtral")
"""Architectures `build_policy` makes from a config (Config.model_type)."""


@contextmanager
def cpu_threads(n: int | None):
    """Run the block with torch using `n` CPU threads (None: leave it). The thread count changes the order
    of float sums, so runs meant to be comparable bit for bit use the same count."""
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def pick_device(preference: str | None = None) -> torch.device:
    """CUDA when present, else CPU; `preference` or $XXPO_DEVICE override."""
    name = preference or os.environ.get("XXPO_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def build_policy(cfg, tokenizer):
    """A policy sized by the config, dropout off, with the tokenizer's explicit pad/eos ids: a GPT-2, or for
    model_type 'mixtral' a Mixtral whose every MLP is n_experts experts with top_k_experts routed per token. Each
    expert is 2·n_embd wide, so a token's active MLP (two experts) is as wide as GPT-2's 4·n_embd MLP."""
    from transformers import GPT2Config, GPT2LMHeadModel, MixtralConfig, MixtralForCausalLM  # slow imports

    ids = {"bos_token_id": tokenizer.eos_token_id, "eos_token_id": tokenizer.eos_token_id,
           "pad_token_id": tokenizer.pad_token_id}
    if cfg.model_type == "mixtral":
        config = MixtralConfig(
            vocab_size=len(tokenizer), max_position_embeddings=N_POSITIONS, num_hidden_layers=cfg.n_layer,
            num_attention_heads=cfg.n_head, num_key_value_heads=cfg.n_head, hidden_size=cfg.n_embd,
            intermediate_size=2 * cfg.n_embd, num_local_experts=cfg.n_experts,
            num_experts_per_tok=cfg.top_k_experts, router_jitter_noise=0.0, attention_dropout=0.0,
            sliding_window=None, tie_word_embeddings=True, **ids)
        model_class = MixtralForCausalLM
    else:
        config = GPT2Config(vocab_size=len(tokenizer), n_positions=N_POSITIONS, n_layer=cfg.n_layer,
                            n_head=cfg.n_head, n_embd=cfg.n_embd, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                            **ids)
        model_class = GPT2LMHeadModel
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.init_seed)
        return model_class(config).eval()


def load_pretrained(name_or_path: str):
    """A pretrained causal LM and its own tokenizer (real `gpt2` on Colab), ready for this lab."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(name_or_path, torch_dtype=torch.float32).eval()
    return model, tokenizer


def token_logp(model, prompt_ids: Tensor, prompt_mask: Tensor, resp_ids: Tensor, temperature: float,
               with_entropy: bool = False):
    """Log-probs of the response tokens under the model: logp[:, t] = log π(resp_t | prompt, resp_<t).

    With x = [prompt, resp] of length L+T, the logits that predict resp_t sit at position L-1+t
    (the shift by one), and are divided by the sampling temperature as in the sampler.
    Args: prompt_ids, prompt_mask [B, L]; resp_ids [B, T]. Returns: logp [B, T] (and entropy [B, T]).
    """
    L = prompt_ids.shape[1]
    x = torch.cat([prompt_ids, resp_ids], dim=1)  # [B, L+T]
    attn = torch.cat([prompt_mask, torch.ones_like(resp_ids)], dim=1)
    logits = model(input_ids=x, attention_mask=attn, position_ids=positions(attn)).logits[:, L - 1:-1]
    logp_all = torch.log_softmax(logits.float() / temperature, dim=-1)  # [B, T, V]
    logp = logp_all.gather(-1, resp_ids[..., None]).squeeze(-1)
    if not with_entropy:
        return logp
    return logp, -(logp_all.exp() * logp_all).sum(-1)


def encode_prompts(tokenizer, problems: list[Problem], device) -> tuple[Tensor, Tensor]:
    """Left-padded prompt ids and mask [N, L]."""
    enc = tokenizer([p.prompt for p in problems], padding=True, return_tensors="pt")
    return enc["input_ids"].to(device), enc["attention_mask"].to(device)


def encode_responses(tokenizer, texts: list[str], T: int, device) -> tuple[Tensor, Tensor]:
    """Response ids (text + EOS, right-padded to T) and mask [N, T]."""
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for t in texts]
    too_long = max(len(r) for r in ids)
    if too_long > T:
        raise ValueError(f"a demonstration needs {too_long} tokens but T_max = {T}; raise T_max or lower demo_filler")
    resp = torch.full((len(ids), T), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros(len(ids), T)
    for i, r in enumerate(ids):
        resp[i, :len(r)] = torch.tensor(r)
        mask[i, :len(r)] = 1.0
    return resp.to(device), mask.to(device)


@torch.no_grad()
def accuracy(model, tokenizer, task: Task, problems: list[Problem], cfg, gen: torch.Generator, device) -> dict:
    """Sampled success on `problems` (one sample each, at the training temperature) and mean length."""
    prompt_ids, prompt_mask = encode_prompts(tokenizer, problems, device)
    resp, mask, _, lengths, truncated = sample(model, prompt_ids, prompt_mask, cfg.T_max, cfg.temperature, gen,
                                               tokenizer.eos_token_id, tokenizer.pad_token_id)
    correct = score(task, tokenizer, problems, resp, lengths, truncated)
    return {"accuracy": correct.float().mean().item(), "len_mean": lengths.float().mean().item(),
            "truncated_frac": truncated.float().mean().item()}


# -------------------------------------------------------------------------------------------------
# warm start

WARM_FIELDS = ("task", "difficulty", "n_layer", "n_head", "n_embd", "model_name", "model_type", "n_experts",
               "top_k_experts", "warm_start_acc",
               "warm_start_max_steps", "warm_start_min_steps", "warm_start_lr", "init_seed", "demo_filler", "demo_wrong_frac",
               "demo_wrong_filler", "T_max", "temperature")
WARM_BATCH, WARM_CHECK_EVERY, WARM_CHECK_PROMPTS = 128, 10, 256
WARM_CODE = ["policy.build_policy", "policy.load_pretrained", "policy.warm_start", "tasks.char_tokenizer"]
"""The entry points of a warm start: the code reachable from them keys the warm-start cache."""


def warm_key(cfg, device, sources: dict[str, str] | None = None) -> str:
    """The cache key of a (resolved) config's warm start: the WARM_FIELDS, the device type and the hash of the
    code a warm start runs (`sources` replaces the package's files, for tests)."""
    spec = {f: getattr(cfg, f) for f in WARM_FIELDS}
    return key_of({"warm": spec, "code": code_hash(WARM_CODE, spec, sources), "device": torch.device(device).type})


def make_policy(cfg, device=None, use_cache: bool = True):
    """The warm-started policy for `cfg` and its tokenizer, from the cache when it is there.

    Returns (model, tokenizer, info) with info = {'steps', 'accuracy', 'seconds', 'key'} of the warm start.
    On the CPU the warm start is computed with one thread, wherever it runs (a notebook, a parallel worker,
    the CLI), so the same key always holds the same weights.
    """
    from xxpo_lab.config import resolve

    cfg = resolve(cfg)
    device = pick_device(None if device is None else str(device))
    spec = {f: getattr(cfg, f) for f in WARM_FIELDS}
    key = warm_key(cfg, device)
    path = cache_dir() / "warm" / f"{key}.pt"
    if cfg.model_name:
        model, tokenizer = load_pretrained(cfg.model_name)
    else:
        tokenizer = char_tokenizer()
        model = build_policy(cfg, tokenizer)
    model.to(device)
    if use_cache and path.exists():
        saved = load_torch(path, "warm start")
        check_meta(saved.get("meta", {}), {"key": key}, path, "warm start")
        model.load_state_dict(saved["state_dict"])
        return model, tokenizer, saved["meta"]["info"]
    with cpu_threads(1 if device.type == "cpu" else None):
        info = warm_start(model, tokenizer, cfg, device) | {"key": key}
    if use_cache:
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        save_torch({"state_dict": state, "meta": {"key": key, "spec": str(spec), "info": info}}, path)
    return model, tokenizer, info


def warm_start(model, tokenizer, cfg, device) -> dict:
    """Supervised training on demonstrations until sampled accuracy reaches cfg.warm_start_acc.

    Demonstrations are the reference answer plus 0..demo_filler dots; a fraction demo_wrong_frac
    carries a wrong answer and 0..demo_wrong_filler dots instead (chapter 3). Accuracy is checked every
    WARM_CHECK_EVERY steps on fixed training prompts; the first check at or above the target, after at least
    warm_start_min_steps steps, stops.
    """
    task = make_task(cfg.task, cfg.difficulty)
    rng = random.Random(cfg.init_seed)
    gen = torch.Generator(device=device).manual_seed(cfg.init_seed)
    check_set = task.sample(WARM_CHECK_PROMPTS, random.Random(cfg.init_seed + 1))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.warm_start_lr, weight_decay=0.0)
    start = time.perf_counter()
    acc = accuracy(model, tokenizer, task, check_set, cfg, gen, device)["accuracy"]
    step = 0
    while acc < cfg.warm_start_acc or step < cfg.warm_start_min_steps:
        if step >= cfg.warm_start_max_steps:
            raise RuntimeError(
                f"warm start of {cfg.task} (difficulty {cfg.difficulty}) reached accuracy {acc:.3f} < warm_start_acc = "
                f"{cfg.warm_start_acc} after warm_start_max_steps = {cfg.warm_start_max_steps}; raise the steps or "
                f"lower the target")
        for _ in range(WARM_CHECK_EVERY):
            problems = task.sample(WARM_BATCH, rng)
            demos = [task.demonstration(p, rng, cfg.demo_filler, cfg.demo_wrong_frac, cfg.demo_wrong_filler)[0]
                     for p in problems]
            prompt_ids, prompt_mask = encode_prompts(tokenizer, problems, device)
            resp, mask = encode_responses(tokenizer, demos, cfg.T_max, device)
            logp = token_logp(model, prompt_ids, prompt_mask, resp, temperature=1.0)
            loss = -(logp * mask).sum() / mask.sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
        acc = accuracy(model, tokenizer, task, check_set, cfg, gen, device)["accuracy"]
    return {"steps": step, "accuracy": acc, "seconds": time.perf_counter() - start}
