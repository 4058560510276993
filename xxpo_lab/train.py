"""The training loop: `train(cfg) -> History`, one row of metrics per step.

One step, top to bottom (DESIGN.md §3):

    prompts ─► sample with the policy of `staleness` steps ago ─► score ─► (reference, critic values)
      ─► advantages ─► prox_logp ─► for epoch, minibatch of whole groups: loss, backward, clip, step
      ─► diagnostics ─► one row

A finished run is cached on disk (keyed by its config and the package source), so a notebook that
asks for the same run again gets it back instead of retraining.
"""

from __future__ import annotations

import copy
import random
import resource
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm

from xxpo_lab import diagnostics as dg
from xxpo_lab.advantages import CRITIC_KIND, get_advantage
from xxpo_lab.batch import Batch, group_rows
from xxpo_lab.config import Config, resolve, sized, to_dict
from xxpo_lab.critic import make_critic, prompt_value_loss, value_loss
from xxpo_lab.losses import get_loss
from xxpo_lab.policy import accuracy, cpu_threads, encode_prompts, make_policy, pick_device, token_logp
from xxpo_lab.rollout import sample, score
from xxpo_lab.runs import History, load_run, run_key, save_run
from xxpo_lab.store import check_meta, load_torch, save_torch
from xxpo_lab.tasks import make_task


class NonFiniteError(FloatingPointError):
    """The loss or the gradient went non-finite; `.history` holds the rows of the steps before it."""

    def __init__(self, message: str, history: History):
        super().__init__(message)
        self.history = history


@dataclass
class State:
    """Everything a run carries from one step to the next (and what a checkpoint saves)."""

    cfg: Config
    device: torch.device
    task: object
    tokenizer: object
    policy: torch.nn.Module
    opt: torch.optim.Optimizer
    warm: dict
    critic: torch.nn.Module | None = None
    opt_critic: torch.optim.Optimizer | None = None
    ref: torch.nn.Module | None = None
    behav: torch.nn.Module | None = None
    versions: deque = field(default_factory=deque)  # (version, state dict) of recent policies, oldest first
    rng: random.Random = None  # prompts
    gen: torch.Generator = None  # sampling
    gen_perm: torch.Generator = None  # minibatch order
    rows: list = field(default_factory=list)
    samples: int = 0


def train(cfg: Config, *, progress: bool = True, cache: bool = True, device: str | None = None,
          callback: Callable[[dict], None] | None = None, checkpoint_dir: str | Path | None = None,
          checkpoint_every: int = 0, threads: int | None = None) -> History:
    """Train a policy with `cfg` and return its History (a DataFrame, one row per step, config in .attrs).

    Row k describes step k; its eval/* columns measure the policy that sampled step k (every eval_every
    steps). A last row, step = cfg.steps, holds only the evaluation of the final policy.

    cfg is first shrunk for fast mode (`config.sized`) and completed with the loss's defaults
    (`config.resolve`). With `cache`, a finished run with the same config, device and package source is
    loaded instead of retrained. With `checkpoint_dir`, a checkpoint is written every `checkpoint_every`
    steps and an existing one is resumed; the resumed run ends identical to an uninterrupted one.
    `callback(row)` is called after every step (live plots). `threads` sets torch's CPU threads (default:
    torch's current count); it is part of the cache key on the CPU, as it changes the order of float sums.
    """
    cfg = resolve(sized(cfg))
    device = pick_device(device)
    threads = threads or torch.get_num_threads()
    key = run_key(cfg, device, threads)
    if cache and (hist := load_run(key)) is not None:
        return hist
    with cpu_threads(threads):
        state = _setup(cfg, device)
        ckpt = Path(checkpoint_dir) / "checkpoint.pt" if checkpoint_dir else None
        if ckpt is not None and ckpt.exists():
            _restore(state, ckpt, key)
        bar = tqdm(range(len(state.rows), cfg.steps), disable=not progress, desc=f"{cfg.loss} seed {cfg.seed}")
        for step in bar:
            evaluation = _evaluate(state, step) if step % cfg.eval_every == 0 else {}  # the policy that samples step
            row = _step(state, step) | evaluation
            state.rows.append(row)
            bar.set_postfix(reward=f"{row['reward/mean']:.3f}")
            if callback is not None:
                callback(row)
            if ckpt is not None and checkpoint_every and (step + 1) % checkpoint_every == 0:
                _checkpoint(state, ckpt, key)
        state.rows.append({"step": cfg.steps, "samples": state.samples} | _evaluate(state, cfg.steps))
    hist = _history(state, key)
    if cache:
        save_run(key, hist, {k: v.detach().cpu() for k, v in state.policy.state_dict().items()})
    return hist


# -------------------------------------------------------------------------------------------------
# one step


def _step(state: State, step: int) -> dict:
    cfg, spec = state.cfg, get_loss(state.cfg.loss)
    t_start = time.perf_counter()
    for group in state.opt.param_groups:
        group["lr"] = cfg.lr * min(1.0, (step + 1) / max(1, cfg.warmup_steps))

    # 1. sample with the policy of `staleness` steps ago (exact simulation of asynchronous RL)
    if cfg.staleness:
        state.versions.append((step, _snapshot(state.policy)))
        while len(state.versions) > cfg.staleness + 1:
            state.versions.popleft()
        behav_version, behav_state = state.versions[0]  # before step `staleness`: the initial policy
        behav = _load(state.behav, behav_state)
    else:
        behav_version, behav = step, state.policy
    b, times, kept_frac = _collect(state, behav, state.rng, state.gen, behav_version)
    b.version_gap = step + 1 - b.version  # versions are counted in training steps; +1: the one being produced

    # 2. reference log-probs, critic values, advantages, the proximal anchor
    with torch.no_grad():
        if state.ref is not None:
            b.ref_logp = token_logp(state.ref, b.prompt_ids, b.prompt_mask, b.resp_ids, cfg.temperature)
        if state.critic is not None:
            b.values = state.critic(b.prompt_ids, b.prompt_mask, b.resp_ids)
        b.adv, b.value_target = get_advantage(cfg.adv)(b, cfg)
        t0 = time.perf_counter()
        if spec.prox == "recompute":
            b.prox_logp = token_logp(state.policy, b.prompt_ids, b.prompt_mask, b.resp_ids, cfg.temperature)
        else:
            b.prox_logp = b.behav_logp
        times["time/prox"] = time.perf_counter() - t0 if spec.prox == "recompute" else 0.0
    row = {"step": step, "samples": state.samples} | dg.rollout_metrics(b, cfg.G) | {"data/kept_frac": kept_frac}
    if b.value_target is not None:
        mask = b.mask if b.values.dim() == 2 else torch.ones_like(b.reward)
        values = b.values if b.values.dim() == 2 else torch.sigmoid(b.values)
        row["value/explained_var"] = dg.explained_variance(values, b.value_target, mask)

    # 3. updates: epochs x minibatches of whole groups
    t0 = time.perf_counter()
    per_update = []
    for _ in range(cfg.epochs):
        for idx in group_rows(cfg.P, cfg.G, cfg.minibatches, state.gen_perm):
            mb = b.rows(idx.to(state.device))
            logp, entropy = token_logp(state.policy, mb.prompt_ids, mb.prompt_mask, mb.resp_ids, cfg.temperature,
                                       with_entropy=True)
            loss, info = spec.fn(logp, mb, cfg)
            state.opt.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(state.policy.parameters(), cfg.max_grad_norm)
            _check_finite(state, step, {"loss/policy": loss, "grad/norm": grad_norm})
            state.opt.step()
            metrics = dg.update_metrics(info, logp, mb, entropy)
            metrics |= {"loss/policy": loss.item(), "grad/norm": grad_norm.item()}
            if state.critic is not None:
                metrics |= _critic_update(state, mb)
            per_update.append(metrics)
    times["time/update"] = time.perf_counter() - t0
    row |= dg.reduce_updates(per_update)

    if cfg.grad_stats_every and step % cfg.grad_stats_every == 0:
        row |= gradient_stats(state, seed=cfg.seed * 100_003 + step)
    times["time/step"] = time.perf_counter() - t_start
    return row | times | _memory(state)


def _collect(state: State, behav, rng: random.Random, gen: torch.Generator, version: int):
    """Sample P groups of G responses and score them. With dynamic sampling, groups whose rewards are
    all equal are dropped and more prompts are sampled (at most max_refill extra rounds; if the batch
    is still short, dropped groups fill it). Returns (batch, times, kept fraction)."""
    cfg, task, tok = state.cfg, state.task, state.tokenizer
    times = {"time/sample": 0.0, "time/score": 0.0}
    kept, dropped, n_groups = [], [], 0
    for _ in range(cfg.max_refill + 1):
        problems = task.sample(cfg.P, rng)
        group_problems = [p for p in problems for _ in range(cfg.G)]  # contiguous groups
        prompt_ids, prompt_mask = (x.repeat_interleave(cfg.G, dim=0) for x in encode_prompts(tok, problems, state.device))
        t0 = time.perf_counter()
        resp, mask, behav_logp, lengths, truncated = sample(behav, prompt_ids, prompt_mask, cfg.T_max,
                                                            cfg.temperature, gen, tok.eos_token_id, tok.pad_token_id)
        width = int(lengths.max())  # drop columns that are padding in every row: the update need not see them
        resp, mask, behav_logp = resp[:, :width], mask[:, :width], behav_logp[:, :width]
        t1 = time.perf_counter()
        correct = score(task, tok, group_problems, resp, lengths, truncated).to(state.device)
        times["time/sample"] += t1 - t0
        times["time/score"] += time.perf_counter() - t1
        state.samples += len(group_problems)
        n_groups += cfg.P
        part = Batch(prompt_ids, prompt_mask, resp, mask, behav_logp, lengths, truncated,
                     torch.full_like(lengths, version), reward=_shaped_reward(correct, lengths, cfg), correct=correct)
        for g in range(cfg.P):
            rows = torch.arange(g * cfg.G, (g + 1) * cfg.G, device=state.device)
            has_signal = bool(correct[rows].any() and not correct[rows].all())  # on accuracy, never on shaping
            (kept if has_signal or not cfg.dynamic_sampling else dropped).append(part.rows(rows))
        if len(kept) >= cfg.P:
            break
    kept_frac = len(kept) / n_groups
    b = _concat((kept + dropped)[:cfg.P], tok.pad_token_id)
    if cfg.mask_truncated:
        b.mask = b.mask * (~b.truncated)[:, None]
    return b, times, kept_frac


def _shaped_reward(correct: torch.Tensor, lengths: torch.Tensor, cfg: Config) -> torch.Tensor:
    """1/0 correctness plus reward_offset, minus DAPO's soft overlong punishment in the last overlong_buffer tokens."""
    reward = correct.float() + cfg.reward_offset
    if cfg.overlong_buffer:
        start = cfg.T_max - cfg.overlong_buffer
        reward = reward - cfg.overlong_penalty * ((lengths - start).clamp(min=0) / cfg.overlong_buffer)
    return reward


def _concat(parts: list[Batch], pad_id: int) -> Batch:
    """Stack groups into one batch: prompts left-padded and responses right-padded to common lengths."""
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
           for name in ("lengths", "truncated", "version", "reward", "correct")},
    )


def _critic_update(state: State, mb: Batch) -> dict:
    """One step of the critic on the minibatch: PPO's clipped value loss, or SPPO's BCE."""
    cfg = state.cfg
    values = state.critic(mb.prompt_ids, mb.prompt_mask, mb.resp_ids)
    if state.critic.kind == "token":
        loss, clipped = value_loss(values, mb.values, mb.value_target, mb.mask, cfg.eps_value)
        extra = {"value/clip_frac": ((clipped.float() * mb.mask).sum() / mb.mask.sum()).item()}
    else:
        loss, extra = prompt_value_loss(values, mb.value_target), {}
    state.opt_critic.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(state.critic.parameters(), cfg.max_grad_norm)
    state.opt_critic.step()
    return {"loss/value": loss.item()} | extra


def _check_finite(state: State, step: int, values: dict) -> None:
    for name, value in values.items():
        if not torch.isfinite(value):
            raise NonFiniteError(f"step {step}: {name} is {value.item()}; the run stops here (the last checkpoint, "
                                 f"if any, is intact). Lower lr or check the loss settings.", _history(state, ""))


# -------------------------------------------------------------------------------------------------
# measurement


@torch.no_grad()
def _evaluate(state: State, step: int) -> dict:
    cfg = state.cfg
    t0 = time.perf_counter()
    gen = torch.Generator(device=state.device).manual_seed(cfg.seed * 7919 + step)  # apart from training's
    res = accuracy(state.policy, state.tokenizer, state.task, state.task.eval_set(cfg.eval_prompts), cfg, gen,
                   state.device)
    return {"eval/accuracy": res["accuracy"], "eval/len_mean": res["len_mean"],
            "time/eval": time.perf_counter() - t0}


def gradient_stats(state: State, seed: int) -> dict:
    """Gradient variance and SNR of the policy-gradient estimate at the current parameters.

    Draws cfg.grad_stats_k independent batches (P·G fresh samples each, with their own generators, so
    training's randomness is untouched), computes each batch's flattened loss gradient as the first
    update of a step would (prox = behav), and reduces them with `diagnostics.grad_moments`. Book: ch. 2.
    """
    cfg, spec = state.cfg, get_loss(state.cfg.loss)
    rng, gen = random.Random(seed), torch.Generator(device=state.device).manual_seed(seed)
    samples_before = state.samples
    grads = []
    for _ in range(cfg.grad_stats_k):
        b, _, _ = _collect(state, state.policy, rng, gen, version=0)
        b.version_gap = torch.ones_like(b.version)
        with torch.no_grad():
            if state.ref is not None:
                b.ref_logp = token_logp(state.ref, b.prompt_ids, b.prompt_mask, b.resp_ids, cfg.temperature)
            if state.critic is not None:
                b.values = state.critic(b.prompt_ids, b.prompt_mask, b.resp_ids)
            b.adv, _ = get_advantage(cfg.adv)(b, cfg)
        b.prox_logp = b.behav_logp
        logp = token_logp(state.policy, b.prompt_ids, b.prompt_mask, b.resp_ids, cfg.temperature)
        loss, _ = spec.fn(logp, b, cfg)
        params = [p for p in state.policy.parameters() if p.requires_grad]
        grads.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params, allow_unused=False)]))
    state.samples = samples_before  # measurement samples do not count as training samples
    return dg.grad_moments(torch.stack(grads))


def _memory(state: State) -> dict:
    if state.device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(state.device) / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KB
    out = {"mem/peak_mb": peak, "mem/policy_params_mb": dg.param_mb(state.policy),
           "mem/policy_optim_mb": dg.optim_mb(state.opt), "mem/critic_params_mb": 0.0, "mem/critic_optim_mb": 0.0}
    if state.critic is not None:
        out |= {"mem/critic_params_mb": dg.param_mb(state.critic), "mem/critic_optim_mb": dg.optim_mb(state.opt_critic)}
    return out


# -------------------------------------------------------------------------------------------------
# set-up, checkpoints, history


def _setup(cfg: Config, device: torch.device) -> State:
    policy, tokenizer, warm = make_policy(cfg, device)
    # fused: one kernel for the whole update instead of a few per parameter tensor (tiny models)
    opt = torch.optim.AdamW(policy.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
    state = State(cfg=cfg, device=device, task=make_task(cfg.task, cfg.difficulty), tokenizer=tokenizer,
                  policy=policy, opt=opt, warm=warm, rng=random.Random(cfg.seed),
                  gen=torch.Generator(device=device).manual_seed(cfg.seed),
                  gen_perm=torch.Generator().manual_seed(cfg.seed + 1))
    kind = CRITIC_KIND.get(cfg.adv)
    if kind is not None:
        state.critic = make_critic(policy, kind)
        state.opt_critic = torch.optim.AdamW(state.critic.parameters(), lr=cfg.critic_lr, weight_decay=0.0,
                                             fused=True)
    if cfg.beta > 0:
        state.ref = copy.deepcopy(policy).requires_grad_(False)
    if cfg.staleness > 0:
        state.behav = copy.deepcopy(policy).requires_grad_(False)
    return state


def _snapshot(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _load(model, state_dict: dict):
    model.load_state_dict(state_dict)
    return model


def _checkpoint(state: State, path: Path, key: str) -> None:
    obj = {
        "meta": {"key": key, "step": len(state.rows)},
        "policy": state.policy.state_dict(), "opt": state.opt.state_dict(),
        "critic": state.critic.state_dict() if state.critic is not None else None,
        "opt_critic": state.opt_critic.state_dict() if state.opt_critic is not None else None,
        "versions": list(state.versions), "rng": state.rng.getstate(), "gen": state.gen.get_state(),
        "gen_perm": state.gen_perm.get_state(), "rows": state.rows, "samples": state.samples,
    }
    save_torch(obj, path)


def _restore(state: State, path: Path, key: str) -> None:
    obj = load_torch(path, "checkpoint")
    check_meta(obj.get("meta", {}), {"key": key}, path, "checkpoint")
    state.policy.load_state_dict(obj["policy"])
    state.opt.load_state_dict(obj["opt"])
    if state.critic is not None:
        state.critic.load_state_dict(obj["critic"])
        state.opt_critic.load_state_dict(obj["opt_critic"])
    state.versions = deque(tuple(v) for v in obj["versions"])
    version, inner, gauss = obj["rng"]
    state.rng.setstate((version, tuple(inner), gauss))
    state.gen.set_state(obj["gen"])
    state.gen_perm.set_state(obj["gen_perm"])
    state.rows, state.samples = list(obj["rows"]), obj["samples"]


def _history(state: State, key: str) -> History:
    hist = pd.DataFrame(state.rows)
    hist.attrs = {"config": to_dict(state.cfg), "warm_start": state.warm, "key": key, "device": state.device.type,
                  "threads": torch.get_num_threads()}
    return hist


