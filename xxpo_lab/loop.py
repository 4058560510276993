"""The RL loop, top to bottom: `run(state)` repeats `training_step`, and a step is

    1. sample   P prompts × G responses with the policy of `staleness` steps ago; score them
    2. prepare  what the loss reads besides logp: reference log-probs, critic values, advantages, π_prox
    3. update   epochs × minibatches gradient steps on this one batch, each minibatch whole groups
    4. measure  one row of metrics (diagnostics.py); every eval_every steps, held-out accuracy

Lines marked ALGO are the algorithm; the rest is bookkeeping (timers, metrics, memory). Nothing here
caches, checkpoints or spawns processes: `runs.train` does that around `run`. Book: appendix "the
minimal loop" shows the same step in 80 lines.
"""

from __future__ import annotations

import copy
import random
import resource
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch

from xxpo_lab import diagnostics as dg
from xxpo_lab.advantages import CRITIC_KIND, get_advantage
from xxpo_lab.batch import Batch, concat, group_rows
from xxpo_lab.config import Config, ConfigError
from xxpo_lab.critic import make_critic, prompt_value_loss, value_loss
from xxpo_lab.losses import LossInfo, get_loss
from xxpo_lab.mismatch import is_weight, load_sampler, off_policy_sequence_mask, sampler_copy, supported_sampler_dtypes
from xxpo_lab.moe import moe_blocks, route_drift, routing
from xxpo_lab.policy import accuracy, encode_prompts, make_policy, token_logp
from xxpo_lab.rollout import logp_noise, sample, score
from xxpo_lab.tasks import make_task


class NonFiniteError(FloatingPointError):
    """The loss or the gradient went non-finite; `.history` holds the rows of the steps before it (set by
    `runs.train`, which keeps the history)."""

    history = None


@dataclass
class State:
    """Everything a run carries from one step to the next; `state_dict()` is what a checkpoint saves."""

    cfg: Config
    device: torch.device
    task: object
    tokenizer: object
    policy: torch.nn.Module
    opt: torch.optim.Optimizer
    warm: dict  # the warm start's record (steps, accuracy, seconds, key)
    critic: torch.nn.Module | None = None
    opt_critic: torch.optim.Optimizer | None = None
    ref: torch.nn.Module | None = None  # frozen copy of the warm start, when beta > 0
    behav: torch.nn.Module | None = None  # the sampler's copy, when staleness > 0
    sampler: torch.nn.Module | None = None  # the sampler's copy in sampler_dtype, when it is not float32
    versions: deque = field(default_factory=deque)  # (version, weights) of recent policies, oldest first
    rng: random.Random = None  # prompts
    gen: torch.Generator = None  # sampling
    gen_perm: torch.Generator = None  # minibatch order
    rows: list = field(default_factory=list)  # one dict of metrics per finished step
    samples: int = 0  # responses sampled so far
    seconds: float = 0.0  # training time so far (time/step summed)

    def state_dict(self) -> dict:
        return {"policy": self.policy.state_dict(), "opt": self.opt.state_dict(),
                "critic": self.critic.state_dict() if self.critic is not None else None,
                "opt_critic": self.opt_critic.state_dict() if self.opt_critic is not None else None,
                "versions": list(self.versions), "rng": self.rng.getstate(), "gen": self.gen.get_state(),
                "gen_perm": self.gen_perm.get_state(), "rows": self.rows, "samples": self.samples,
                "seconds": self.seconds}

    def load_state_dict(self, saved: dict) -> None:
        self.policy.load_state_dict(saved["policy"])
        self.opt.load_state_dict(saved["opt"])
        if self.critic is not None:
            self.critic.load_state_dict(saved["critic"])
            self.opt_critic.load_state_dict(saved["opt_critic"])
        self.versions = deque(tuple(v) for v in saved["versions"])
        version, inner, gauss = saved["rng"]
        self.rng.setstate((version, tuple(inner), gauss))
        self.gen.set_state(saved["gen"])
        self.gen_perm.set_state(saved["gen_perm"])
        self.rows, self.samples, self.seconds = list(saved["rows"]), saved["samples"], saved["seconds"]


def setup(cfg: Config, device: torch.device) -> State:
    """The warm-started policy, its optimizer, and the extra models the config asks for (critic, reference,
    stale sampler), with the run's three seeded random streams. `cfg` must be resolved (`config.resolve`)."""
    policy, tokenizer, warm = make_policy(cfg, device)
    # fused: one kernel for the whole update instead of a few per parameter tensor (tiny models)
    opt = torch.optim.AdamW(policy.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
    state = State(cfg=cfg, device=device, task=make_task(cfg.task, cfg.difficulty), tokenizer=tokenizer,
                  policy=policy, opt=opt, warm=warm, rng=random.Random(cfg.seed),
                  gen=torch.Generator(device=device).manual_seed(cfg.seed),
                  gen_perm=torch.Generator().manual_seed(cfg.seed + 1))
    kind = CRITIC_KIND.get(cfg.adv)
    if kind is not None:  # PPO's token critic or SPPO's prompt critic: a second network, trained alongside
        state.critic = make_critic(policy, kind)
        state.opt_critic = torch.optim.AdamW(state.critic.parameters(), lr=cfg.critic_lr, weight_decay=0.0,
                                             fused=True)
    if cfg.beta > 0:
        state.ref = copy.deepcopy(policy).requires_grad_(False)
    if cfg.staleness > 0:
        state.behav = copy.deepcopy(policy).requires_grad_(False)
    if cfg.sampler_dtype != "float32":
        if cfg.sampler_dtype not in supported_sampler_dtypes(device):
            raise ConfigError(f"Config.sampler_dtype = {cfg.sampler_dtype!r} is not supported on {device}: the "
                              f"supported ones there are {', '.join(supported_sampler_dtypes(device))}")
        state.sampler = sampler_copy(policy, cfg.sampler_dtype)
    return state


def run(state: State, on_step: Callable[[State], None] | None = None) -> None:
    """Train from the state's next step to cfg.steps, appending one row per step to state.rows, then a last
    row (step = cfg.steps) with the final policy's evaluation. Row k's eval/* columns measure the policy
    that sampled step k. `on_step(state)` runs after every step (progress, checkpoints, live plots)."""
    cfg = state.cfg
    for step in range(len(state.rows), cfg.steps):
        evaluation = evaluate(state, step) if step % cfg.eval_every == 0 else {}
        state.rows.append(training_step(state, step) | evaluation)
        if on_step is not None:
            on_step(state)
    state.rows.append({"step": cfg.steps, "samples": state.samples} | evaluate(state, cfg.steps))


# -------------------------------------------------------------------------------------------------
# one step


def training_step(state: State, step: int) -> dict:
    """One step of RL; returns its row of metrics."""
    cfg, times, t_start = state.cfg, {}, time.perf_counter()
    for group in state.opt.param_groups:  # linear warmup: Adam's first updates are sign-like and large
        group["lr"] = cfg.lr * min(1.0, (step + 1) / max(1, cfg.warmup_steps))

    # ALGO 1. sample with the policy of `staleness` steps ago (an exact simulation of asynchronous RL)
    version, behav = behaviour_policy(state, step)
    b, kept_frac = collect(state, behav, version, state.rng, state.gen, times)
    b.version_gap = step + 1 - b.version  # versions count training steps; +1: the one being produced
    b.routes = sampled_routes(behav, b)  # MoE policies: the experts each token was sent to (None if dense)

    # ALGO 2. reference log-probs, critic values, advantages, the proximal anchor
    prepare(state, b, times)

    # ALGO 3. K = epochs × minibatches updates on this one batch
    t0 = time.perf_counter()
    per_update = [update(state, b.rows(idx.to(state.device)), step)
                  for _ in range(cfg.epochs) for idx in group_rows(cfg.P, cfg.G, cfg.minibatches, state.gen_perm)]
    times["time/update"] = time.perf_counter() - t0

    row = {"step": step, "samples": state.samples} | dg.rollout_metrics(b, cfg.G) | {"data/kept_frac": kept_frac}
    row |= dg.mismatch_metrics(b, cfg.is_clip_min, cfg.is_clip_max)
    if b.value_target is not None:
        row["value/explained_var"] = critic_explained_variance(b)
    row |= dg.reduce_updates(per_update)
    if cfg.grad_stats_every and step % cfg.grad_stats_every == 0:
        row |= gradient_stats(state, seed=cfg.seed * 100_003 + step)
    times["time/step"] = time.perf_counter() - t_start - times.get("time/measure", 0.0)
    state.seconds += times["time/step"]
    return row | times | memory(state)


def behaviour_policy(state: State, step: int) -> tuple[int, torch.nn.Module]:
    """(version, model) of the policy that samples step `step`: the current one, or with staleness d the
    weights as they were at the start of step `step - d` (the initial weights before that); with a
    sampler_dtype other than float32, those weights in the sampler's precision (ch. 10)."""
    cfg = state.cfg
    if not cfg.staleness:
        version, behav = step, state.policy
    else:
        state.versions.append((step, {k: v.detach().clone() for k, v in state.policy.state_dict().items()}))
        while len(state.versions) > cfg.staleness + 1:
            state.versions.popleft()
        version, weights = state.versions[0]
        state.behav.load_state_dict(weights)
        behav = state.behav
    if state.sampler is not None:  # the same weights, sent to an engine that computes in another precision
        load_sampler(state.sampler, behav.state_dict(), cfg.sampler_dtype)
        behav = state.sampler
    return version, behav


def collect(state: State, behav, version: int, rng: random.Random, gen: torch.Generator,
            times: dict) -> tuple[Batch, float]:
    """Sample P groups of G responses with `behav` (recording behav_logp) and score them.

    With dynamic sampling, groups without both right and wrong answers are dropped (`has_signal`) and more
    prompts are sampled (at most max_refill extra rounds; if the batch is still short, dropped groups fill it).
    Adds the sampling and scoring seconds to `times`. Returns (batch, share of sampled groups kept).
    """
    cfg, task, tok = state.cfg, state.task, state.tokenizer
    times.setdefault("time/sample", 0.0)
    times.setdefault("time/score", 0.0)
    kept, dropped, n_groups = [], [], 0
    for _ in range(cfg.max_refill + 1):
        problems = task.sample(cfg.P, rng)
        group_problems = [p for p in problems for _ in range(cfg.G)]  # contiguous groups
        prompt_ids, prompt_mask = (x.repeat_interleave(cfg.G, dim=0) for x in encode_prompts(tok, problems, state.device))
        t0 = time.perf_counter()
        resp, mask, behav_logp, lengths, truncated = sample(behav, prompt_ids, prompt_mask, cfg.T_max,
                                                            cfg.temperature, gen, tok.eos_token_id, tok.pad_token_id,
                                                            top_p=cfg.top_p, top_k=cfg.top_k)
        width = int(lengths.max())  # drop columns that are padding in every row: the update need not see them
        resp, mask, behav_logp = resp[:, :width], mask[:, :width], behav_logp[:, :width]
        if cfg.behav_noise:  # a sampler that disagrees with the trainer (ch. 5)
            behav_logp = behav_logp + logp_noise(mask, cfg.behav_noise, cfg.behav_noise_corr, gen)
        t1 = time.perf_counter()
        right = score(task, tok, group_problems, resp, lengths, truncated, before_cut=True).to(state.device)
        correct = right & ~truncated  # exactly score(): a truncated response scores 0
        times["time/sample"] += t1 - t0
        times["time/score"] += time.perf_counter() - t1
        state.samples += len(group_problems)
        n_groups += cfg.P
        part = Batch(prompt_ids, prompt_mask, resp, mask, behav_logp, lengths, truncated,
                     torch.full_like(lengths, version), reward=shaped_reward(correct, lengths, cfg), correct=correct,
                     right_before_cut=right & truncated)
        signal = has_signal(correct, cfg.G)
        for g in range(cfg.P):
            rows = torch.arange(g * cfg.G, (g + 1) * cfg.G, device=state.device)
            (kept if signal[g] or not cfg.dynamic_sampling else dropped).append(part.rows(rows))
        if len(kept) >= cfg.P:
            break
    b = concat((kept + dropped)[:cfg.P], tok.pad_token_id)
    if cfg.mask_truncated:  # DAPO's overlong filtering: truncated responses carry no loss
        b.mask = b.mask * (~b.truncated)[:, None]
    return b, len(kept) / n_groups


@torch.no_grad()
def sampled_routes(behav, b: Batch) -> torch.Tensor | None:
    """The experts the sampling policy chose for every position of the batch, [B, n_layer, L+T, k], from one
    forward of the learner's code (the GSPO paper's Routing Replay records them the same way); None for a
    dense policy."""
    if not moe_blocks(behav):
        return None
    with routing(behav) as chosen:
        token_logp(behav, b.prompt_ids, b.prompt_mask, b.resp_ids, temperature=1.0)  # routes ignore temperature
    return chosen[0]


def shaped_reward(correct: torch.Tensor, lengths: torch.Tensor,
                  cfg: Config) -> torch.Tensor:
    """1/0 correctness plus reward_offset, minus DAPO's soft overlong punishment
    in the last overlong_buffer tokens (arXiv 2503.14476 eq. 13: a linear ramp
    to -overlong_penalty at T_max). [B] -> [B]. Book: ch. 4."""
    reward = correct.float() + cfg.reward_offset
    if cfg.overlong_buffer:
        start = cfg.T_max - cfg.overlong_buffer  # the buffer's first position
        over = (lengths - start).clamp(min=0)  # tokens into the buffer
        reward = reward - cfg.overlong_penalty * over / cfg.overlong_buffer
    return reward


def has_signal(correct: torch.Tensor, G: int) -> torch.Tensor:
    """DAPO's dynamic-sampling test: the groups with both right and wrong answers.
    It reads correctness, never the shaped reward: under overlong shaping an
    all-wrong group has unequal rewards, and a test on rewards would keep it
    (NeMo-RL#2431). [B] -> [P] bool. Book: ch. 4."""
    right = correct.view(-1, G)  # [P, G]
    return right.any(-1) & ~right.all(-1)


@torch.no_grad()
def prepare(state: State, b: Batch, times: dict, recompute_prox: bool | None = None) -> None:
    """Fill in what the losses read besides logp: ref_logp (KL), values (critic at sampling time), adv and
    value_target (`ADVANTAGES[cfg.adv]`), and prox_logp: the sampler's log-probs, or, for losses that
    recompute it (decoupled PPO) and with prox_source='trainer', an extra forward pass of the current
    policy, timed as time/prox. Then the mismatch correction (is_mode) weights each token's loss.
    `recompute_prox` overrides the choice (gradient statistics measure the first update: no)."""
    cfg = state.cfg
    if state.ref is not None:
        b.ref_logp = token_logp(state.ref, b.prompt_ids, b.prompt_mask, b.resp_ids, cfg.temperature)
    if state.critic is not None:
        b.values = state.critic(b.prompt_ids, b.prompt_mask, b.resp_ids)
    b.adv, b.value_target = get_advantage(cfg.adv)(b, cfg)
    recompute = (get_loss(cfg.loss).prox == "recompute" or cfg.prox_source == "trainer"
                 if recompute_prox is None else recompute_prox)
    t0 = time.perf_counter()
    b.prox_logp = (token_logp(state.policy, b.prompt_ids, b.prompt_mask, b.resp_ids, cfg.temperature)
                   if recompute else b.behav_logp)
    times["time/prox"] = time.perf_counter() - t0 if recompute else 0.0
    if recompute and not torch.isfinite(b.behav_logp[b.mask > 0]).all():
        raise NonFiniteError(f"mismatch/abs_gap: the sampler ({cfg.sampler_dtype}) recorded a non-finite log-prob; "
                             "the run stops here (the last checkpoint, if any, is intact)")
    if cfg.is_mode != "none" and recompute:
        # ALGO: the weight on each token's loss; every loss that allows is_mode is linear in A (Loss.linear), so
        # weighting A is weighting the loss, exactly as TRL's per_token_loss * importance_sampling_ratio
        b.is_weight = is_weight(b.prox_logp, b.behav_logp, b.mask, cfg.is_mode, cfg.is_clip_min, cfg.is_clip_max)
        b.adv = b.adv * b.is_weight
    if cfg.measure_prox:  # A-3PO: the anchor it approximates, for the error metric only
        t0 = time.perf_counter()
        b.exact_prox_logp = token_logp(state.policy, b.prompt_ids, b.prompt_mask, b.resp_ids, cfg.temperature)
        times["time/measure"] = time.perf_counter() - t0


def update(state: State, mb: Batch, step: int) -> dict:
    """One gradient step of the policy (and of the critic, if any) on a minibatch; its metrics. A minibatch
    with no valid token (overlong filtering masked every response in it) is skipped: no step, no metrics
    (an AdamW step on a zero gradient would still move the weights by its momentum)."""
    cfg = state.cfg
    if not mb.mask.any():
        return {}
    # ALGO: the loss of the current policy on data sampled by an older one, then one AdamW step
    with routing(state.policy, mb.routes if cfg.routing_replay else None) as chosen:  # MoE: Routing Replay
        logp, entropy = token_logp(state.policy, mb.prompt_ids, mb.prompt_mask, mb.resp_ids, cfg.temperature,
                                   with_entropy=True)
    dropped = {}
    if cfg.off_policy_mask is not None:  # ALGO: DeepSeek-V3.2 drops drifted negative responses, update by update
        keep = off_policy_sequence_mask(mb.adv, logp, mb.behav_logp, mb.mask, cfg.off_policy_mask)  # [B, 1]
        mb = replace(mb, adv=mb.adv * keep)
        dropped = {"opm/masked_frac": 1.0 - keep.mean().item()}
    loss, info = loss_of(cfg.loss, logp, mb, cfg)
    state.opt.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(state.policy.parameters(), cfg.max_grad_norm)
    for name, value in (("loss/policy", loss), ("grad/norm", grad_norm)):
        if not torch.isfinite(value):
            raise NonFiniteError(f"step {step}: {name} is {value.item()}; the run stops here (the last checkpoint, "
                                 f"if any, is intact). Lower lr or check the loss settings.")
    state.opt.step()
    metrics = dg.update_metrics(info, logp, mb, entropy) | {"loss/policy": loss.item(), "grad/norm": grad_norm.item()}
    metrics |= dropped
    if mb.exact_prox_logp is not None:
        metrics |= dg.prox_error(info.prox_logp, mb.exact_prox_logp, mb.behav_logp, logp, mb.mask)
    if chosen:  # the experts the router would pick now against those it picked at sampling
        metrics["moe/route_drift"] = route_drift(chosen[0], mb.routes, mb.mask).item()
    if state.critic is not None:
        metrics |= critic_update(state, mb)
    return metrics


def loss_of(name: str, logp: torch.Tensor, b: Batch, cfg: Config) -> tuple[torch.Tensor, LossInfo]:
    """`LOSSES[name].fn(logp, b, cfg)`, checked to keep the loss contract (a scalar and a LossInfo)."""
    loss, info = get_loss(name).fn(logp, b, cfg)
    if not isinstance(info, LossInfo) or loss.dim() != 0:
        raise TypeError(f"loss {name!r} returned ({type(loss).__name__} of shape {tuple(loss.shape)}, "
                        f"{type(info).__name__}); a loss returns (scalar tensor, LossInfo)")
    return loss, info


def critic_update(state: State, mb: Batch) -> dict:
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


def critic_explained_variance(b: Batch) -> float:
    """How well the critic's values (at sampling time) predicted their targets: token values against GAE
    returns, or SPPO's σ(V(x)) against the reward."""
    if b.values.dim() == 2:
        return dg.explained_variance(b.values, b.value_target, b.mask)
    return dg.explained_variance(torch.sigmoid(b.values), b.value_target, torch.ones_like(b.reward))


# -------------------------------------------------------------------------------------------------
# measurement


@torch.no_grad()
def evaluate(state: State, step: int) -> dict:
    """Held-out accuracy and length of the current policy: one sample per prompt at the training temperature,
    with a generator of its own (seeded by step), so evaluating never changes the training run. Also what
    the evaluated policy cost: the samples and the training seconds before this step."""
    cfg = state.cfg
    t0 = time.perf_counter()
    gen = torch.Generator(device=state.device).manual_seed(cfg.seed * 7919 + step)
    res = accuracy(state.policy, state.tokenizer, state.task, state.task.eval_set(cfg.eval_prompts), cfg, gen,
                   state.device)
    return {"eval/accuracy": res["accuracy"], "eval/len_mean": res["len_mean"], "eval/samples": state.samples,
            "time/elapsed": state.seconds, "time/eval": time.perf_counter() - t0}


def gradient_stats(state: State, seed: int) -> dict:
    """Gradient variance and SNR of the policy-gradient estimate at the current parameters.

    Draws M = cfg.grad_stats_batches independent batches (P·G fresh samples each, with their own generators,
    so training's randomness is untouched), computes each batch's flattened loss gradient as the first
    update of a step would (prox = behav), and reduces them with `diagnostics.grad_moments`. Book: ch. 2.
    """
    cfg = state.cfg
    rng, gen = random.Random(seed), torch.Generator(device=state.device).manual_seed(seed)
    samples_before = state.samples
    params = [p for p in state.policy.parameters() if p.requires_grad]
    grads = []
    for _ in range(cfg.grad_stats_batches):
        b, _ = collect(state, state.policy, 0, rng, gen, {})
        b.version_gap = torch.ones_like(b.version)
        prepare(state, b, {}, recompute_prox=False)
        logp = token_logp(state.policy, b.prompt_ids, b.prompt_mask, b.resp_ids, cfg.temperature)
        loss, _ = loss_of(cfg.loss, logp, b, cfg)
        grads.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)]))
    state.samples = samples_before  # measurement samples do not count as training samples
    return dg.grad_moments(torch.stack(grads))


def memory(state: State) -> dict:
    """Peak memory of the process, and the bytes of the policy's and the critic's parameters and optimizer state."""
    if state.device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(state.device) / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KB
    out = {"mem/peak_mb": peak, "mem/policy_params_mb": dg.param_mb(state.policy),
           "mem/policy_optim_mb": dg.optim_mb(state.opt), "mem/critic_params_mb": 0.0, "mem/critic_optim_mb": 0.0}
    if state.critic is not None:
        out |= {"mem/critic_params_mb": dg.param_mb(state.critic), "mem/critic_optim_mb": dg.optim_mb(state.opt_critic)}
    return out
