"""One flat config for a run, fast mode, and the resolution of per-algorithm defaults.

Every field has a docstring under it (CleanRL style); `field_docs()` reads them back for the CLI's
`--help` and the book. Notebooks change a config with `dataclasses.replace`. Bad values fail here,
when the config is made, with the field, the value and what is allowed.
"""

from __future__ import annotations

import ast
import inspect
import math
import os
import typing
from dataclasses import asdict, dataclass, fields, replace
from functools import cache


class ConfigError(ValueError):
    """A config field has a value that is not allowed (the message names both)."""


@dataclass(frozen=True)
class Config:
    # ---------------------------------------------------------------- task
    task: str = "reverse"
    """Toy verifiable task, one of `xxpo_lab.TASKS`: addition, arithmetic, countdown, copy, reverse, sort."""
    difficulty: int | None = None
    """Task size: digits per operand (addition), operands (arithmetic, countdown), max string length (copy/reverse/sort). None: the task's default (2, 3, 3, 5)."""
    # ---------------------------------------------------------------- policy
    n_layer: int = 2
    """GPT-2 blocks of the policy (and of the critic, when there is one)."""
    n_head: int = 4
    """Attention heads per block."""
    n_embd: int = 64
    """Width of the residual stream."""
    model_name: str | None = None
    """Load this pretrained causal LM (hub name or local path) with its own tokenizer instead of building a GPT-2 from the fields above."""
    model_type: str = "gpt2"
    """Architecture built from the fields above: 'gpt2' (dense) or 'mixtral' (a mixture of experts: every block's MLP is
    n_experts experts, each token routed to top_k_experts of them; ch. 5)."""
    n_experts: int = 8
    """Experts per block of a 'mixtral' policy."""
    top_k_experts: int = 2
    """Experts each token is routed to in a 'mixtral' policy (the router's top-k)."""
    # ---------------------------------------------------------------- warm start
    warm_start_acc: float = 0.4
    """Supervised warm start stops at the first check where sampled accuracy reaches this value (RL then has signal)."""
    warm_start_max_steps: int = 3000
    """Upper bound on supervised steps; the warm start fails loudly if the target accuracy is not reached."""
    warm_start_min_steps: int = 0
    """Supervised steps taken at least, even once the target accuracy is reached (lets slower-forming habits settle)."""
    warm_start_lr: float = 1e-3
    """AdamW learning rate of the supervised warm start."""
    init_seed: int = 0
    """Seed of the initial weights and the warm start; RL seeds (`seed`) share one warm start."""
    demo_filler: int = 0
    """Demonstrations end with 0..demo_filler filler dots '.' after the answer (free length for the policy)."""
    demo_wrong_frac: float = 0.0
    """Fraction of demonstrations whose answer is deliberately wrong (chapter 3 uses it to teach the policy to 'know' it erred)."""
    demo_wrong_filler: int = 0
    """Wrong demonstrations end with 0..demo_wrong_filler dots (instead of 0..demo_filler)."""
    reward_offset: float = 0.0
    """Added to every reward (wrong: offset, right: 1 + offset). Group baselines cancel it; no baseline does not (ch. 2)."""
    # ---------------------------------------------------------------- sampling
    P: int = 16
    """Prompts per training step."""
    G: int = 8
    """Samples (responses) per prompt, the group; B = P*G sequences per step."""
    T_max: int = 8
    """Maximum response length in tokens (EOS included); a response without EOS is truncated and scores 0."""
    temperature: float = 1.0
    """Sampling temperature; the learner divides logits by the same value, so log-probs match the sampler's."""
    # ---------------------------------------------------------------- optimisation
    steps: int = 200
    """Training steps; each samples one batch of P*G responses."""
    lr: float = 1e-4
    """AdamW learning rate of the policy."""
    warmup_steps: int = 10
    """The learning rate rises linearly over the first warmup_steps steps (Adam's first updates are sign-like and large)."""
    epochs: int = 1
    """Passes over each batch (PPO's reuse of one batch for several updates)."""
    minibatches: int = 1
    """Minibatches per epoch, each made of whole groups; updates per batch = epochs * minibatches."""
    max_grad_norm: float = 1.0
    """Gradient-norm clip of the policy (and of the critic)."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    # ---------------------------------------------------------------- loss
    loss: str = "grpo"
    """Policy loss, one of `xxpo_lab.LOSSES` (`python -m xxpo_lab losses` lists them)."""
    adv: str | None = None
    """Advantage estimator, one of `xxpo_lab.ADVANTAGES`; None takes the loss's own default."""
    eps_low: float | None = None
    """Lower clip range: the ratio is clipped below at 1 - eps_low (CISPO: its IS-weight bound; GMPO: a log-space range). None: the loss's default."""
    eps_high: float | None = None
    """Upper clip range: 1 + eps_high (DAPO's clip-higher sets it above eps_low; below eps_low is allowed too, a
    tighter upper side). Must be > 0. None: the loss's default."""
    dual_clip_c: float = 0.0
    """Dual-clip constant c > 1 caps the loss of negative-advantage tokens at -c*A (0 turns it off)."""
    tau_pos: float | None = None
    """SAPO gate temperature for tokens with A > 0. None: the loss's default (1.0)."""
    tau_neg: float | None = None
    """SAPO gate temperature for tokens with A <= 0. None: the loss's default (1.05)."""
    sp_eta: float = 1.0
    """Self-Play PO: the log-ratio of a response is regressed onto sp_eta * (win rate - 1/2)."""
    adv_eps: float = 1e-4
    """Epsilon added to the std in std-normalised advantages (TRL's value; verl uses 1e-6)."""
    # ---------------------------------------------------------------- KL to a frozen reference
    beta: float = 0.0
    """KL coefficient to the frozen warm-start policy (0 turns the reference off)."""
    kl_estimator: str = "k3"
    """Per-token KL estimator: k1, k2 or k3 (Schulman's). In the loss, k3 descends the forward KL and k1 has no
    expected gradient; in the reward, k1 gives the reverse-KL gradient (TRL PPO and verl default to k1 there)."""
    kl_in: str = "loss"
    """Where the KL goes: 'loss' (GRPO: added to the per-token loss) or 'reward' (PPO-RLHF: a per-token penalty in the reward)."""
    kl_is_correct: bool = False
    """In the loss, multiply each token's KL estimate by π_θ/π_prox, so that on tokens sampled by an older (or another)
    policy it still estimates the KL of π_θ: DeepSeek-V3.2's unbiased KL, TRL's use_bias_correction_kl (on by default
    in TRL, with GSPO's sequence ratio for sequence-level losses; here always the token ratio)."""
    # ---------------------------------------------------------------- critic (PPO's GAE, SPPO's prompt value)
    critic_lr: float = 1e-3
    """AdamW learning rate of the critic, when the advantage estimator needs one."""
    eps_value: float = 0.2
    """Value clipping range of PPO's critic loss (absolute, in reward units)."""
    gamma: float = 1.0
    """GAE discount of future rewards (1: the outcome counts fully at every token)."""
    lam: float = 0.95
    """GAE lambda: 1 sums all future TD errors (Monte Carlo), 0 uses one step."""
    # ---------------------------------------------------------------- off-policy data (asynchronous RL)
    staleness: int = 0
    """Rollouts of step k come from the policy as it was at the start of step k - staleness (0: synchronous)."""
    behav_weight_cap: float | None = None
    """Decoupled PPO / A-3PO: tokens whose behaviour weight prox/behav exceeds this are masked (AReaL). None: no cap."""
    prox_interp: str = "loglinear"
    """A-3PO: how the proximal policy is interpolated between the sampler and the current policy: 'loglinear' (in
    log-probability, the paper's and AReaL's default) or 'linear' (in probability, AReaL's other method; ch. 7)."""
    measure_prox: bool = False
    """A-3PO: also run the exact proximal forward pass, for measurement only (the loss never reads it, and its time is
    logged as time/measure, outside time/step), to log the interpolation's error prox/approx_err (ch. 7)."""
    routing_replay: bool = False
    """Mixture-of-experts policies: the learner's forward reuses the experts the sampler chose for each token (GSPO
    paper's Routing Replay); the router still weights them and still learns (ch. 5)."""
    behav_noise: float = 0.0
    """Std of Gaussian noise added to the sampler's recorded log-probs behav_logp, a stand-in for a sampler that
    disagrees with the trainer (0: exact; ch. 5)."""
    behav_noise_corr: float = 0.0
    """Correlation of that noise between neighbouring tokens of a response, in [0, 1): 0 is i.i.d. per token; near 1 an
    offset that persists along the response (AR(1) with the same std at every token)."""
    # ---------------------------------------------------------------- the sampler is not the trainer (ch. 10)
    sampler_dtype: str = "float32"
    """Precision of the sampler's copy of the policy: 'float32' (the trainer's), 'bfloat16', 'float16', or 'float8' (linear
    weights rounded to float8 e4m3 with a scale per tensor, as FP8 rollout engines do). The trainer stays float32."""
    top_p: float = 1.0
    """The sampler draws from the smallest set of most likely tokens whose probability reaches top_p (1: off). The trainer
    never applies it, so the sampler's log-prob of a kept token is higher by -log(kept mass)."""
    top_k: int = 0
    """The sampler draws from the top_k most likely tokens (0: off); the trainer never applies it."""
    prox_source: str = "sampler"
    """Where π_prox (PPO's π_old) comes from for losses that do not recompute it: 'sampler' (the log-probs the sampler
    recorded: verl's bypass mode) or 'trainer' (one more forward pass of the trainer on the sampled tokens, before the
    first update: verl's decoupled mode, TRL with vLLM)."""
    is_mode: str = "none"
    """Correction of the sampler/trainer mismatch, TRL's vllm_importance_sampling_mode: 'none', 'token_truncate' (TIS),
    'token_mask' (MIS, IcePop), 'sequence_truncate', 'sequence_mask' (TRL's default). The weight π_prox/π_behav (a
    product over the response for sequence modes) multiplies each token's loss. Needs prox_source='trainer'."""
    is_clip_min: float | None = None
    """Lower bound of the correction weight: truncate modes raise it to this, mask modes drop tokens below it (None: none)."""
    is_clip_max: float | None = 3.0
    """Upper bound of the correction weight (TRL's vllm_importance_sampling_clip_max, 3; verl's rollout_is_threshold, 2)."""
    off_policy_mask: float | None = None
    """DeepSeek-V3.2's off-policy sequence masking: at each update, drop responses with A < 0 whose mean
    log(π_behav/π_θ) per token exceeds this δ (TRL's off_policy_mask_threshold). None: off."""
    m2_threshold: float = 0.04
    """M2PO: tokens with the largest (log π_θ/π_behav)² are masked until the batch's mean of it is at most this."""
    vespo_k_pos: float = 2.0
    """VESPO: shape k of the Gamma weight φ(W) = e^λ·W^k·e^(-λW) for responses with A >= 0 (TRL's vespo_k_pos)."""
    vespo_lambda_pos: float = 3.0
    """VESPO: rate λ of the Gamma weight for A >= 0 (TRL's vespo_lambda_pos)."""
    vespo_k_neg: float = 3.0
    """VESPO: shape k for A < 0 (TRL's vespo_k_neg)."""
    vespo_lambda_neg: float = 2.0
    """VESPO: rate λ for A < 0 (TRL's vespo_lambda_neg)."""
    # ---------------------------------------------------------------- DAPO's data tricks
    dynamic_sampling: bool = False
    """Drop groups whose answers are all right or all wrong (read from correctness, never from the shaped reward) and
    sample more prompts until the batch is full (DAPO)."""
    max_refill: int = 8
    """Dynamic sampling gives up after this many extra sampling rounds and trains on what it has."""
    overlong_buffer: int = 0
    """DAPO soft overlong punishment: responses longer than T_max - overlong_buffer lose reward linearly (0: off)."""
    overlong_penalty: float = 1.0
    """Reward lost by a response that reaches T_max under the soft overlong punishment."""
    mask_truncated: bool = False
    """Truncated responses get zero loss weight (DAPO's overlong filtering). Per-sequence aggregations still divide by B,
    as verl's trainer does (its global batch size), so their rows count as zeros."""
    # ---------------------------------------------------------------- measurement
    eval_every: int = 25
    """Held-out accuracy every this many steps (before the step: the policy that samples it) and after the last step."""
    eval_prompts: int = 256
    """Held-out prompts per evaluation (one sample each, at the training temperature)."""
    grad_stats_every: int = 0
    """Every this many steps, gradient variance and SNR from grad_stats_batches fresh batches at fixed parameters (0: off)."""
    grad_stats_batches: int = 8
    """Independent batches M used by the gradient statistics."""
    seed: int = 0
    """RL seed: prompts, sampling and minibatch order."""

    def __post_init__(self) -> None:
        _validate(self)


# -------------------------------------------------------------------------------------------------
# per-algorithm defaults

GLOBAL_DEFAULTS = {"adv": "grpo", "eps_low": 0.2, "eps_high": 0.2, "tau_pos": 1.0, "tau_neg": 1.05}
LOSS_DEFAULT_FIELDS = tuple(GLOBAL_DEFAULTS)


def resolve(cfg: Config) -> Config:
    """Fill the fields left as None: the loss's defaults (GSPO's tiny eps, DAPO's eps_high, ...) and the
    task's default difficulty."""
    from xxpo_lab.losses import LOSSES
    from xxpo_lab.tasks import DEFAULT_DIFFICULTY

    spec = LOSSES[cfg.loss]
    fill = {f: spec.defaults.get(f, GLOBAL_DEFAULTS[f]) for f in LOSS_DEFAULT_FIELDS if getattr(cfg, f) is None}
    if cfg.difficulty is None:
        fill["difficulty"] = DEFAULT_DIFFICULTY[cfg.task]
    return replace(cfg, **fill) if fill else cfg


# -------------------------------------------------------------------------------------------------
# fast mode: one switch, same code path

def fast_mode() -> bool:
    """True when XXPO_FAST=1: CI and quick builds shrink sizes; the code path is the same."""
    return os.environ.get("XXPO_FAST", "0") == "1"


def pick(full, fast):
    """The one place where fast mode changes a size: `pick(full=400, fast=20)`."""
    return fast if fast_mode() else full


def sized(cfg: Config) -> Config:
    """Shrink a config for fast mode (steps, prompts, evaluation); identity in full mode."""
    if not fast_mode():
        return cfg
    return replace(
        cfg,
        steps=max(2, cfg.steps // 10, cfg.staleness + 1),  # staleness must stay below steps
        P=max(cfg.minibatches, min(cfg.P, 8) // cfg.minibatches * cfg.minibatches),
        eval_prompts=min(cfg.eval_prompts, 64),
        eval_every=max(1, cfg.eval_every // 10),
        grad_stats_batches=min(cfg.grad_stats_batches, 4),
        grad_stats_every=cfg.grad_stats_every and max(1, cfg.grad_stats_every // 10),
        warm_start_acc=min(cfg.warm_start_acc, 0.2),
        warm_start_min_steps=cfg.warm_start_min_steps // 10,
    )


# -------------------------------------------------------------------------------------------------
# validation

GROUP_ADVANTAGES = ("grpo", "dr_grpo", "rloo", "reinforce_pp_baseline", "win_rate")
KL_ESTIMATOR_NAMES = ("k1", "k2", "k3")
KL_PLACES = ("loss", "reward")
PROX_INTERPS = ("loglinear", "linear")


def _fail(name: str, value, allowed: str) -> None:
    raise ConfigError(f"Config.{name} = {value!r} is not allowed: {allowed}")


def _one_of(name: str, value, names) -> None:
    if value not in names:
        _fail(name, value, "must be one of " + ", ".join(sorted(names)))


def _check_types(cfg: Config) -> None:
    """Each field holds its annotated type: ints are ints (not 2.5, not True, not "16"), floats are finite numbers."""
    for f in fields(cfg):
        value, kinds = getattr(cfg, f.name), _kinds(f.name)
        if value is None and type(None) in kinds:
            continue
        if bool in kinds:
            ok = isinstance(value, bool)
        elif float in kinds:
            ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        elif int in kinds:
            ok = isinstance(value, int) and not isinstance(value, bool)
        else:
            ok = isinstance(value, str)
        if not ok:
            names = " or ".join("None" if k is type(None) else ("a finite " if k is float else "an " if k is int else "a ")
                                + k.__name__ for k in kinds)
            _fail(f.name, value, f"must be {names}")


@cache
def _kinds(name: str) -> tuple[type, ...]:
    hint = typing.get_type_hints(Config)[name]
    return typing.get_args(hint) or (hint,)


def _validate(cfg: Config) -> None:
    from xxpo_lab.advantages import ADVANTAGES
    from xxpo_lab.losses import LOSSES
    from xxpo_lab.policy import MODEL_TYPES
    from xxpo_lab.tasks import TASKS, make_task

    _check_types(cfg)
    _one_of("task", cfg.task, TASKS)
    _one_of("loss", cfg.loss, LOSSES)
    if cfg.adv is not None:
        _one_of("adv", cfg.adv, ADVANTAGES)
    _one_of("kl_estimator", cfg.kl_estimator, KL_ESTIMATOR_NAMES)
    _one_of("kl_in", cfg.kl_in, KL_PLACES)
    if cfg.model_type not in MODEL_TYPES:
        _fail("model_type", cfg.model_type, "must be one of " + ", ".join(MODEL_TYPES) + " (the architectures the lab "
              "builds from a config and samples with a KV cache)")
    if cfg.routing_replay and cfg.model_type != "mixtral":
        _fail("routing_replay", True, f"needs a mixture-of-experts policy (model_type='mixtral'), not {cfg.model_type!r}")
    if cfg.model_name is not None and not cfg.model_name.strip():
        _fail("model_name", cfg.model_name, "must name a model (a hub name or a local path), or be None to build a GPT-2")
    if cfg.difficulty is not None and cfg.difficulty < 1:
        _fail("difficulty", cfg.difficulty, "must be an integer >= 1 (or None for the task's default)")
    positive_ints = ("n_layer", "n_head", "n_embd", "n_experts", "warm_start_max_steps", "P", "G", "T_max",
                     "steps", "epochs", "minibatches", "eval_every", "eval_prompts", "grad_stats_batches", "max_refill")
    for name in positive_ints:
        if getattr(cfg, name) < 1:
            _fail(name, getattr(cfg, name), "must be an integer >= 1")
    positive = ("lr", "warm_start_lr", "temperature", "max_grad_norm", "critic_lr", "eps_value", "sp_eta", "adv_eps")
    for name in positive:
        if not getattr(cfg, name) > 0:
            _fail(name, getattr(cfg, name), "must be > 0")
    for name in ("eps_low", "eps_high", "tau_pos", "tau_neg"):
        value = getattr(cfg, name)
        if value is not None and not value > 0:
            _fail(name, value, "must be > 0 (or None for the loss's default)")
    nonneg = ("warm_start_min_steps", "warmup_steps", "staleness", "demo_filler", "demo_wrong_filler", "overlong_buffer", "grad_stats_every", "beta",
              "weight_decay", "overlong_penalty", "seed", "init_seed", "behav_noise")
    for name in nonneg:
        if getattr(cfg, name) < 0:
            _fail(name, getattr(cfg, name), "must be >= 0")
    if not 1 <= cfg.top_k_experts <= cfg.n_experts:
        _fail("top_k_experts", cfg.top_k_experts, f"must be in [1, n_experts = {cfg.n_experts}]")
    if not 0 <= cfg.behav_noise_corr < 1:
        _fail("behav_noise_corr", cfg.behav_noise_corr, "must be in [0, 1)")
    if cfg.warm_start_min_steps > cfg.warm_start_max_steps:
        _fail("warm_start_min_steps", cfg.warm_start_min_steps, f"must be <= warm_start_max_steps = {cfg.warm_start_max_steps}")
    if cfg.n_embd % cfg.n_head:
        _fail("n_embd", cfg.n_embd, f"must be a multiple of n_head = {cfg.n_head}")
    if not 0 < cfg.warm_start_acc <= 1:
        _fail("warm_start_acc", cfg.warm_start_acc, "must be in (0, 1]")
    if not 0 <= cfg.demo_wrong_frac < 1:
        _fail("demo_wrong_frac", cfg.demo_wrong_frac, "must be in [0, 1)")
    if cfg.dual_clip_c != 0 and not cfg.dual_clip_c > 1:
        _fail("dual_clip_c", cfg.dual_clip_c, "must be > 1 (or 0 to turn dual clip off)")
    if not 0 <= cfg.gamma <= 1:
        _fail("gamma", cfg.gamma, "must be in [0, 1]")
    if not 0 <= cfg.lam <= 1:
        _fail("lam", cfg.lam, "must be in [0, 1]")
    if cfg.behav_weight_cap is not None and not cfg.behav_weight_cap > 1:
        _fail("behav_weight_cap", cfg.behav_weight_cap, "must be > 1 (or None for no cap)")
    if cfg.staleness >= cfg.steps:
        _fail("staleness", cfg.staleness, f"must be < steps = {cfg.steps}: with more, every step would sample with the "
              "initial policy")
    _one_of("prox_interp", cfg.prox_interp, PROX_INTERPS)
    if cfg.P % cfg.minibatches:
        _fail("minibatches", cfg.minibatches,
              f"must divide P = {cfg.P} so that every minibatch holds whole groups")
    if cfg.overlong_buffer >= cfg.T_max:
        _fail("overlong_buffer", cfg.overlong_buffer, f"must be < T_max = {cfg.T_max}")
    spec = LOSSES[cfg.loss]
    for name, off in (("dual_clip_c", 0.0), ("behav_weight_cap", None), ("prox_interp", "loglinear"),
                      ("measure_prox", False)):
        if getattr(cfg, name) != off and name not in spec.switches:
            honoured = ", ".join(n for n, s in LOSSES.items() if name in s.switches)
            _fail(name, getattr(cfg, name), f"loss {cfg.loss!r} does not use it (the losses that do: {honoured})")
    adv = cfg.adv if cfg.adv is not None else spec.defaults.get("adv", GLOBAL_DEFAULTS["adv"])
    per_token = adv == "gae" or (adv == "reinforce_pp" and (cfg.gamma < 1 or (cfg.beta > 0 and cfg.kl_in == "reward")))
    if spec.seq_adv and per_token:
        _fail("loss", cfg.loss, f"needs one advantage per sequence, but adv = {adv!r} (gamma = {cfg.gamma}, "
              f"kl_in = {cfg.kl_in!r}) gives one per token; use loss='gspo_token', GSPO's form for per-token advantages")
    if adv in GROUP_ADVANTAGES and cfg.G < 2:
        _fail("G", cfg.G, f"must be >= 2 with the group baseline adv = {adv!r} (use adv='none', 'gae' or 'sppo' for G = 1)")
    if cfg.grad_stats_batches < 3:
        _fail("grad_stats_batches", cfg.grad_stats_batches, "must be >= 3 (a variance and its jackknife need 3 batches)")
    if adv == "sppo" and cfg.reward_offset != 0:
        _fail("reward_offset", cfg.reward_offset, "must be 0 with adv='sppo' (its critic predicts a success probability)")
    if adv == "sppo" and cfg.overlong_buffer:
        _fail("overlong_buffer", cfg.overlong_buffer, "must be 0 with adv='sppo': the overlong punishment makes rewards "
              "other than 0 and 1, and the prompt critic's BCE needs 0/1 rewards")
    if cfg.dynamic_sampling and cfg.G < 2:
        _fail("dynamic_sampling", True, "needs G >= 2 (it drops groups whose answers are all right or all wrong)")
    _validate_mismatch(cfg, spec)
    from xxpo_lab.tasks import DEFAULT_DIFFICULTY

    difficulty = cfg.difficulty if cfg.difficulty is not None else DEFAULT_DIFFICULTY[cfg.task]
    try:
        task = make_task(cfg.task, difficulty)
    except ValueError as exc:
        raise ConfigError(f"Config.{exc}") from None
    need = task.max_answer_tokens + 1  # + EOS
    if cfg.T_max < need:
        _fail("T_max", cfg.T_max, f"must be >= {need}: {cfg.task} at difficulty {difficulty} has answers of up to "
              f"{task.max_answer_tokens} tokens plus EOS")


def _validate_mismatch(cfg: Config, spec) -> None:
    """The sampler/trainer options (ch. 10)."""
    from xxpo_lab.mismatch import IS_MODES, SAMPLER_DTYPES

    _one_of("sampler_dtype", cfg.sampler_dtype, SAMPLER_DTYPES)
    _one_of("prox_source", cfg.prox_source, ("sampler", "trainer"))
    _one_of("is_mode", cfg.is_mode, IS_MODES)
    if not 0 < cfg.top_p <= 1:
        _fail("top_p", cfg.top_p, "must be in (0, 1] (1 turns it off)")
    if cfg.top_k < 0:
        _fail("top_k", cfg.top_k, "must be >= 0 (0 turns it off)")
    for name in ("m2_threshold", "vespo_k_pos", "vespo_lambda_pos", "vespo_k_neg", "vespo_lambda_neg"):
        if not getattr(cfg, name) > 0:
            _fail(name, getattr(cfg, name), "must be > 0")
    if cfg.off_policy_mask is not None and cfg.off_policy_mask < 0:
        _fail("off_policy_mask", cfg.off_policy_mask, "must be >= 0 (or None to turn it off)")
    lo, hi = cfg.is_clip_min, cfg.is_clip_max
    if lo is not None and not lo > 0:
        _fail("is_clip_min", lo, "must be > 0 (or None for no lower bound)")
    if cfg.is_mode.endswith("truncate") and hi is not None and not hi > 1:
        _fail("is_clip_max", hi, f"must be > 1 with is_mode = {cfg.is_mode!r}: a truncation threshold <= 1 would cut "
              "every weight above it, the on-policy 1 included")
    if lo is not None and hi is not None and not lo < hi:
        _fail("is_clip_min", lo, f"must be < is_clip_max = {hi} (the band [is_clip_min, is_clip_max] keeps the weights "
              "inside it)")
    if cfg.is_mode.endswith("mask") and ((lo is not None and lo >= 1) or (hi is not None and hi <= 1)):
        _fail("is_clip_min" if lo is not None and lo >= 1 else "is_clip_max", lo if lo is not None and lo >= 1 else hi,
              "must leave 1 inside the band: a band without the on-policy weight 1 masks a sampler that agrees")
    if cfg.is_mode != "none":
        if cfg.prox_source != "trainer" and spec.prox != "recompute":
            _fail("is_mode", cfg.is_mode, "needs prox_source='trainer': the weight π_prox/π_behav compares the trainer's "
                  "log-probs with the sampler's, and with prox_source='sampler' they are the same numbers")
        if spec.prox == "recompute" or spec.own_is or not spec.linear:
            _fail("is_mode", cfg.is_mode, f"loss {cfg.loss!r} weights its tokens by the sampler's probabilities itself "
                  "or is not linear in the advantage; use is_mode with one of: "
                  + ", ".join(n for n, s in _losses().items() if s.linear and not s.own_is and s.prox != "recompute"))
    if cfg.off_policy_mask is not None and not spec.linear:
        _fail("off_policy_mask", cfg.off_policy_mask, f"loss {cfg.loss!r} is not linear in the advantage, so masking a "
              "response by zeroing its advantage would change its loss, not drop it")


def _losses() -> dict:
    from xxpo_lab.losses import LOSSES

    return LOSSES


# -------------------------------------------------------------------------------------------------
# field docstrings, read back from this file's source (for --help and the book)

@cache
def field_docs() -> dict[str, str]:
    """Map each Config field to the docstring written under it."""
    tree = ast.parse(inspect.getsource(Config))
    body = tree.body[0].body
    docs = {}
    for node, nxt in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant):
            docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def to_dict(cfg: Config) -> dict:
    return asdict(cfg)


def from_dict(d: dict) -> Config:
    names = {f.name for f in fields(Config)}
    unknown = set(d) - names
    if unknown:
        raise ConfigError(f"unknown Config fields {sorted(unknown)}; the fields are {sorted(names)}")
    return Config(**d)
