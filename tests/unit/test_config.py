"""Config: bad values fail at once with the field, the value and what is allowed; loss defaults; docs."""

import re
import typing
from dataclasses import fields, replace

import pytest

from xxpo_lab import Config, ConfigError, field_docs, resolve, sized
from xxpo_lab.advantages import ADVANTAGES
from xxpo_lab.config import from_dict, to_dict
from xxpo_lab.losses import LOSSES
from xxpo_lab.tasks import TASKS


@pytest.mark.parametrize("changes, message", [
    ({"task": "chess"}, r"Config.task = 'chess' .* addition"),
    ({"loss": "ppo2"}, r"Config.loss = 'ppo2' .* must be one of a3po"),
    ({"adv": "zscore"}, r"Config.adv = 'zscore' .* grpo"),
    ({"eps_low": 0.0}, r"Config.eps_low = 0.0 .* > 0"),
    ({"eps_high": -0.2}, r"Config.eps_high = -0.2"),
    ({"tau_pos": 0.0}, r"Config.tau_pos = 0.0"),
    ({"tau_neg": -1.0}, r"Config.tau_neg = -1.0"),
    ({"staleness": -1}, r"Config.staleness = -1 .* >= 0"),
    ({"G": 1}, r"Config.G = 1 .* group baseline adv = 'grpo'"),
    ({"P": 16, "minibatches": 3}, r"Config.minibatches = 3 .* divide P = 16 .* whole groups"),
    ({"task": "addition", "difficulty": 4, "T_max": 4}, r"Config.T_max = 4 .* must be >= 6"),
    ({"lr": 0.0}, r"Config.lr = 0.0 .* > 0"),
    ({"temperature": -1.0}, r"Config.temperature"),
    ({"dual_clip_c": 0.5}, r"Config.dual_clip_c = 0.5 .* > 1"),
    ({"kl_estimator": "k4"}, r"Config.kl_estimator = 'k4' .* k1, k2, k3"),
    ({"kl_in": "critic"}, r"Config.kl_in = 'critic'"),
    ({"n_embd": 30, "n_head": 4}, r"Config.n_embd = 30 .* multiple of n_head = 4"),
    ({"overlong_buffer": 8, "T_max": 8}, r"Config.overlong_buffer = 8 .* < T_max = 8"),
    ({"behav_weight_cap": 0.5}, r"Config.behav_weight_cap = 0.5"),
    ({"warm_start_acc": 1.5}, r"Config.warm_start_acc = 1.5 .* \(0, 1\]"),
    ({"G": 1, "adv": "none", "dynamic_sampling": True},
     r"^Config.dynamic_sampling = True is not allowed: needs G >= 2 \(it drops groups whose answers are all right or all wrong\)$"),
    ({"steps": 0}, r"Config.steps = 0 .* >= 1"),
    ({"grad_stats_batches": 2}, r"Config.grad_stats_batches = 2 .* >= 3"),
    ({"task": "addition", "difficulty": 9}, r"Config.difficulty = 9 .* 'addition'.* \[1, 6\]"),
    ({"loss": "sppo", "reward_offset": 1.0}, r"^Config.reward_offset = 1.0 is not allowed: must be 0 with "
     r"adv='sppo' \(its critic predicts a success probability\)$"),
    ({"loss": "sppo", "G": 1, "overlong_buffer": 2}, r"^Config.overlong_buffer = 2 is not allowed: must be 0 with "
     r"adv='sppo': .* the prompt critic's BCE needs 0/1 rewards$"),
    ({"loss": "grpo", "G": 1}, r"^Config.G = 1 is not allowed: must be >= 2 with the group baseline adv = 'grpo'"),
    ({"loss": "sapo", "tau_neg": 0.0}, r"^Config.tau_neg = 0.0 is not allowed: must be > 0"),
    ({"loss": "sapo", "tau_pos": -1.0}, r"^Config.tau_pos = -1.0 is not allowed: must be > 0"),
    # types: every field holds its annotated type, floats are finite
    ({"beta": float("nan")}, r"Config.beta = nan .* must be a finite float"),
    ({"weight_decay": float("nan")}, r"Config.weight_decay = nan"),
    ({"overlong_penalty": float("nan")}, r"Config.overlong_penalty = nan"),
    ({"lr": float("inf")}, r"Config.lr = inf .* must be a finite float"),
    ({"steps": 2.5}, r"Config.steps = 2.5 .* must be an int"),
    ({"P": "16"}, r"Config.P = '16' .* must be an int"),
    ({"G": True}, r"Config.G = True .* must be an int"),
    ({"dynamic_sampling": 1}, r"Config.dynamic_sampling = 1 .* must be a bool"),
    ({"loss": 3}, r"Config.loss = 3 .* must be a str"),
    ({"eps_low": "0.2"}, r"Config.eps_low = '0.2' .* must be a finite float or None"),
    # switches a loss does not honour, and GSPO with per-token advantages
    ({"loss": "sapo", "dual_clip_c": 3.0}, r"^Config.dual_clip_c = 3.0 is not allowed: loss 'sapo' does not use it "
     r"\(the losses that do: ppo, grpo, bnpo, dr_grpo, dapo, decoupled_ppo, a3po, sppo\)$"),
    ({"loss": "gspo", "dual_clip_c": 3.0}, r"Config.dual_clip_c = 3.0 .* loss 'gspo' does not use it"),
    ({"loss": "grpo", "behav_weight_cap": 5.0}, r"Config.behav_weight_cap = 5.0 .* does not use it .* decoupled_ppo"),
    ({"loss": "gspo", "adv": "gae"}, r"Config.loss = 'gspo' .* one advantage per sequence.*'gae'.*gspo_token"),
    ({"loss": "gspo", "adv": "reinforce_pp", "gamma": 0.9}, r"Config.loss = 'gspo' .* per token"),
    ({"loss": "gspo", "adv": "reinforce_pp", "beta": 0.1, "kl_in": "reward"},
     r"Config.loss = 'gspo' .* \(gamma = 1.0, kl_in = 'reward'\) gives one per token"),
    ({"warm_start_min_steps": 6, "warm_start_max_steps": 5},
     r"^Config.warm_start_min_steps = 6 is not allowed: must be <= warm_start_max_steps = 5$"),
])
def test_bad_values_fail_when_the_config_is_made(changes, message):
    with pytest.raises(ConfigError, match=message):
        Config(**changes)
    with pytest.raises(ConfigError, match=message):  # also through replace, as notebooks do
        replace(Config(), **changes)


def test_single_sample_is_fine_without_a_group_baseline():
    Config(G=1, adv="none")
    Config(G=1, loss="sppo")
    Config(G=1, loss="ppo")


def test_loss_defaults_fill_only_what_is_left_open():
    assert (resolve(Config(loss="gspo")).eps_low, resolve(Config(loss="gspo")).eps_high) == (3e-4, 4e-4)
    assert resolve(Config(loss="dapo")).eps_high == 0.28 and resolve(Config(loss="dapo")).eps_low == 0.2
    assert resolve(Config(loss="dr_grpo")).adv == "dr_grpo"
    assert resolve(Config(loss="gspo", eps_low=0.1)).eps_low == 0.1  # an explicit value wins
    assert resolve(Config(loss="ppo")).adv == "gae"
    assert resolve(Config(task="addition")).difficulty == 2 and resolve(Config(task="reverse")).difficulty == 5
    cfg = resolve(Config(loss="grpo"))
    assert resolve(cfg) is cfg  # nothing left to fill


def test_every_field_is_documented():
    docs = field_docs()
    assert set(docs) == {f.name for f in fields(Config)}
    assert all(len(d) > 15 for d in docs.values())


def test_fast_mode_shrinks_sizes_only(monkeypatch):
    cfg = Config(steps=200, P=16, minibatches=4, warm_start_min_steps=300)
    assert sized(cfg) == cfg
    monkeypatch.setenv("XXPO_FAST", "1")
    small = sized(cfg)
    assert small.steps == 20 and small.P == 8 and small.P % small.minibatches == 0
    assert small.warm_start_min_steps == 30
    assert replace(small, steps=cfg.steps, P=cfg.P, eval_prompts=cfg.eval_prompts, eval_every=cfg.eval_every,
                   grad_stats_batches=cfg.grad_stats_batches, warm_start_acc=cfg.warm_start_acc,
                   warm_start_min_steps=cfg.warm_start_min_steps) == cfg


def test_fast_mode_sizes_each_field_as_documented(monkeypatch):
    from xxpo_lab.config import pick

    cfg = Config(steps=25, P=16, minibatches=1, eval_prompts=256, eval_every=5, grad_stats_batches=8,
                 grad_stats_every=55, warm_start_acc=0.5, warm_start_min_steps=300)
    assert pick(full=400, fast=20) == 400
    monkeypatch.setenv("XXPO_FAST", "1")
    assert pick(full=400, fast=20) == 20
    small = sized(cfg)
    expected = dict(steps=2, P=8, eval_prompts=64, eval_every=1, grad_stats_batches=4, grad_stats_every=5,
                    warm_start_acc=0.2, warm_start_min_steps=30)
    assert {k: getattr(small, k) for k in expected} == expected
    assert all(type(getattr(small, k)) is type(v) for k, v in expected.items())
    assert sized(replace(cfg, grad_stats_every=0)).grad_stats_every == 0  # off stays off
    assert sized(replace(cfg, grad_stats_every=15)).grad_stats_every == 1
    assert sized(replace(cfg, eval_every=50, grad_stats_every=50)).eval_every == 5
    assert sized(replace(cfg, eval_every=50, grad_stats_every=50)).grad_stats_every == 5


def test_the_combinations_that_stay_allowed():
    Config(loss="gspo_token", adv="gae")  # GSPO-token takes per-token advantages
    Config(loss="gspo", adv="reinforce_pp")  # γ = 1 and no KL in the reward: one return per sequence
    Config(loss="decoupled_ppo", dual_clip_c=3.0, behav_weight_cap=5.0)
    Config(lr=1)  # an int where a float is expected is a number
    Config(loss="gspo", adv="reinforce_pp", beta=0.1, kl_in="loss")  # the KL in the loss: still one return
    Config(loss="gspo", adv="reinforce_pp", beta=0.0, kl_in="reward")  # no KL: nothing per token in the reward
    # the edges of the ranges that are inside them
    Config(warm_start_min_steps=5, warm_start_max_steps=5)
    Config(warm_start_acc=1.0, gamma=0.0, lam=0.0, demo_wrong_frac=0.0)
    Config(gamma=1.0, lam=1.0)
    Config(loss="ppo", dual_clip_c=1.5)
    Config(loss="decoupled_ppo", behav_weight_cap=1.5)
    Config(G=2, dynamic_sampling=True)
    Config(model_type="mixtral", routing_replay=True, n_experts=1, top_k_experts=1)
    Config(behav_noise=0.0, behav_noise_corr=0.0)


# Every field, one out-of-range value each and the whole of what the error says is allowed. A new field fails
# test_every_field_has_a_range_case until it is added here or to FREE (with the reason).
INT_GE_1, GE_0, GT_0, LOSS_DEFAULT = "must be an integer >= 1", "must be >= 0", "must be > 0", \
    "must be > 0 (or None for the loss's default)"
ONE_OF = lambda names: "must be one of " + ", ".join(sorted(names))  # noqa: E731
OUT_OF_RANGE = {
    "task": ("chess", ONE_OF(TASKS)), "difficulty": (0, INT_GE_1 + " (or None for the task's default)"),
    "n_layer": (0, INT_GE_1), "n_head": (0, INT_GE_1), "n_embd": (0, INT_GE_1),
    "model_name": (" ", "must name a model (a hub name or a local path), or be None to build a GPT-2"),
    "model_type": ("llama", "must be one of gpt2, mixtral (the architectures the lab builds from a config and "
                            "samples with a KV cache)"),
    "n_experts": (0, INT_GE_1), "top_k_experts": (0, "must be in [1, n_experts = 8]"),
    "routing_replay": (True, "needs a mixture-of-experts policy (model_type='mixtral'), not 'gpt2'"),
    "behav_noise": (-0.1, GE_0), "behav_noise_corr": (-0.5, "must be in [0, 1)"),
    "warm_start_acc": (0.0, "must be in (0, 1]"), "warm_start_max_steps": (0, INT_GE_1),
    "warm_start_min_steps": (-1, GE_0), "warm_start_lr": (0.0, GT_0), "init_seed": (-1, GE_0),
    "demo_filler": (-1, GE_0), "demo_wrong_frac": (1.0, "must be in [0, 1)"), "demo_wrong_filler": (-1, GE_0),
    "P": (0, INT_GE_1), "G": (0, INT_GE_1), "T_max": (0, INT_GE_1), "temperature": (0.0, GT_0),
    "steps": (0, INT_GE_1), "lr": (-1e-4, GT_0), "warmup_steps": (-1, GE_0), "epochs": (0, INT_GE_1),
    "minibatches": (0, INT_GE_1), "max_grad_norm": (0.0, GT_0), "weight_decay": (-0.1, GE_0),
    "loss": ("ppo2", ONE_OF(LOSSES)), "adv": ("zscore", ONE_OF(ADVANTAGES)), "eps_low": (0.0, LOSS_DEFAULT),
    "eps_high": (-0.1, LOSS_DEFAULT), "dual_clip_c": (1.0, "must be > 1 (or 0 to turn dual clip off)"),
    "tau_pos": (0.0, LOSS_DEFAULT), "tau_neg": (0.0, LOSS_DEFAULT), "sp_eta": (0.0, GT_0), "adv_eps": (0.0, GT_0),
    "beta": (-0.01, GE_0), "kl_estimator": ("k4", ONE_OF(["k1", "k2", "k3"])),
    "kl_in": ("critic", ONE_OF(["loss", "reward"])), "critic_lr": (0.0, GT_0), "eps_value": (0.0, GT_0),
    "gamma": (1.01, "must be in [0, 1]"), "lam": (-0.01, "must be in [0, 1]"), "staleness": (-1, GE_0),
    "behav_weight_cap": (1.0, "must be > 1 (or None for no cap)"), "prox_interp": ("cubic", ONE_OF(["linear", "loglinear"])),
    "max_refill": (0, INT_GE_1),
    "overlong_buffer": (-1, GE_0), "overlong_penalty": (-1.0, GE_0), "eval_every": (0, INT_GE_1),
    "eval_prompts": (0, INT_GE_1), "grad_stats_every": (-1, GE_0),
    "grad_stats_batches": (2, "must be >= 3 (a variance and its jackknife need 3 batches)"), "seed": (-1, GE_0),
    "sampler_dtype": ("int4", ONE_OF(["float32", "bfloat16", "float16", "float8"])),
    "top_p": (0.0, "must be in (0, 1] (1 turns it off)"), "top_k": (-1, "must be >= 0 (0 turns it off)"),
    "prox_source": ("engine", ONE_OF(["sampler", "trainer"])),
    "is_mode": ("tis", ONE_OF(["none", "token_truncate", "token_mask", "sequence_truncate", "sequence_mask"])),
    "is_clip_min": (0.0, "must be > 0 (or None for no lower bound)"),
    "is_clip_max": (1.0, "must be > 1 with is_mode = 'token_truncate': a truncation threshold <= 1 would cut every "
                         "weight above it, the on-policy 1 included"),
    "off_policy_mask": (-0.1, "must be >= 0 (or None to turn it off)"), "m2_threshold": (0.0, GT_0),
    "vespo_k_pos": (0.0, GT_0), "vespo_lambda_pos": (0.0, GT_0), "vespo_k_neg": (-1.0, GT_0),
    "vespo_lambda_neg": (0.0, GT_0),
}
FREE = {
    "reward_offset": "any finite shift of every reward is a valid experiment (chapter 2 uses 0 and 5)",
    "dynamic_sampling": "a bool: both values are valid",
    "mask_truncated": "a bool: both values are valid",
    "kl_is_correct": "a bool: both values are valid (it changes nothing without a KL term in the loss)",
    "measure_prox": "a bool: both values are valid with a3po (the loss that reads it; another loss fails, tested in test_async)",
}
# The other side of a two-sided range, where a field has one.
ABOVE_RANGE = {"top_k_experts": 9, "behav_noise_corr": 1.0, "warm_start_acc": 1.01, "demo_wrong_frac": 1.5, "gamma": 2.0, "lam": 1.5, "difficulty": 99,
               "warm_start_min_steps": 4000, "overlong_buffer": 8, "minibatches": 3, "staleness": 200, "top_p": 1.5}
# A context that lets a switch be checked on its own (dual clip and the weight cap need a loss that reads them).
CONTEXT = {"dual_clip_c": {"loss": "ppo"}, "behav_weight_cap": {"loss": "decoupled_ppo"}, "prox_interp": {"loss": "a3po"},
           "is_clip_max": {"is_mode": "token_truncate", "prox_source": "trainer"}}
FIELDS = [f.name for f in fields(Config)]


def test_every_field_has_a_range_case():
    assert set(OUT_OF_RANGE) | set(FREE) == set(FIELDS)
    assert not set(OUT_OF_RANGE) & set(FREE)


@pytest.mark.parametrize("name", sorted(OUT_OF_RANGE))
def test_each_field_out_of_range_names_the_field_the_value_and_the_range(name):
    value, allowed = OUT_OF_RANGE[name]
    with pytest.raises(ConfigError, match=rf"^Config\.{name} = {re.escape(repr(value))} is not allowed: {re.escape(allowed)}$"):
        Config(**CONTEXT.get(name, {}), **{name: value})


@pytest.mark.parametrize("name", sorted(ABOVE_RANGE))
def test_two_sided_ranges_fail_above_too(name):
    with pytest.raises(ConfigError, match=rf"Config\.{name} = {ABOVE_RANGE[name]!r}"):
        Config(**{name: ABOVE_RANGE[name]})


def _wrong_types(name):
    kinds = typing.get_args(typing.get_type_hints(Config)[name]) or (typing.get_type_hints(Config)[name],)
    if bool in kinds:
        return [1, "yes", None]
    if float in kinds:
        return ["0.5", True, [0.5], float("nan"), float("inf"), float("-inf")] + ([] if type(None) in kinds else [None])
    if int in kinds:
        return [2.5, "3", True, 3.0] + ([] if type(None) in kinds else [None])
    return [3, b"x"] + ([] if type(None) in kinds else [None])


@pytest.mark.parametrize("name, value", [(n, v) for n in FIELDS for v in _wrong_types(n)],
                         ids=lambda x: repr(x))
def test_every_field_rejects_wrong_types_nan_and_inf(name, value):
    with pytest.raises(ConfigError, match=rf"Config\.{name} = .* is not allowed: must be"):
        Config(**{name: value})


def test_from_dict_round_trips_and_names_unknown_fields():
    cfg = Config(loss="dapo", lr=3e-4, staleness=2)
    assert from_dict(to_dict(cfg)) == cfg
    with pytest.raises(ConfigError, match=r"unknown Config fields \['learning_rate'\]; the fields are .*'lr'"):
        from_dict({**to_dict(cfg), "learning_rate": 1e-3})
    with pytest.raises(ConfigError, match=r"Config\.lr = 'fast'"):  # known fields are still checked
        from_dict({"lr": "fast"})
