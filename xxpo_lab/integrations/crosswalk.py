"""Each algorithm of the book in the lab, in TRL and in verl: the settings that reproduce it natively (ch. 13).

`RECIPES` is data the tests check, not documentation: for every recipe with a TRL column,
tests/unit/test_crosswalk.py builds a `GRPOConfig` from it and runs TRL's own loss (and, for the advantage,
TRL's own scoring code) against the lab's loss with the recipe's lab settings; for every recipe with a verl
column, tests/verl/test_crosswalk_verl.py builds verl's actor config from it and calls verl's own loss and
advantage functions. Where an engine has no native option, its column names the integration instead
(`LabGRPOTrainer(lab_loss=...)`, `loss_mode=xxpo_<name>`), which runs the lab's function itself.

`trl_lab` and `verl_lab` are the lab settings under which the engine's native option equals the lab's
function exactly: they are the differences between the engines and the lab, as data.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

ACTOR = "actor_rollout_ref.actor."
"""verl's actor config path; recipes write actor fields without it."""
T_MAX = "<T_max>"
"""Placeholder for the run's maximum response length (Dr. GRPO's constant normaliser in verl)."""


@dataclass(frozen=True)
class Recipe:
    algorithm: str
    chapter: int
    lab: dict
    """The lab's Config fields for this algorithm (loss, adv and what the chapter sets)."""
    trl: dict | None = None
    """GRPOConfig fields that reproduce it with TRL's own loss (None: TRL has no native option)."""
    verl: dict | None = None
    """verl overrides (actor fields without `actor_rollout_ref.actor.`) for verl's own loss (None: none)."""
    trl_lab: dict = field(default_factory=dict)
    """Lab fields under which TRL's native option equals the lab exactly (the difference, as data)."""
    verl_lab: dict = field(default_factory=dict)
    """Lab fields under which verl's native option equals the lab exactly."""
    note: str = ""
    """Where the engines differ from each other and from the lab, in a sentence."""

    @property
    def loss(self) -> str:
        return self.lab["loss"]

    def loss_fields(self) -> dict:
        """The lab settings that shape the loss itself (what an integration passes on as lab_config), without
        those of the lab's loop (loss name, advantage, group size, staleness)."""
        return {k: v for k, v in self.lab.items() if k not in ("loss", "adv", "G", "staleness")}


RECIPES = [
    Recipe("PPO", 1, {"loss": "ppo", "adv": "gae"},
           verl={"algorithm.adv_estimator": "gae", "policy_loss.loss_mode": "vanilla", "loss_agg_mode": "token-mean"},
           verl_lab={"dual_clip_c": 3.0},
           note="TRL's GRPOTrainer has no critic; verl's vanilla loss always applies the dual clip (clip_ratio_c = 3)"),
    Recipe("GRPO", 2, {"loss": "grpo", "adv": "grpo"},
           trl={"loss_type": "grpo", "scale_rewards": "group", "beta": 0.0},
           verl={"algorithm.adv_estimator": "grpo", "algorithm.norm_adv_by_std_in_grpo": True,
                 "policy_loss.loss_mode": "vanilla", "loss_agg_mode": "seq-mean-token-mean", "use_kl_loss": False},
           verl_lab={"dual_clip_c": 3.0, "adv_eps": 1e-6},
           note="the std's epsilon: TRL 1e-4, verl 1e-6; verl also dual-clips at 3"),
    Recipe("RLOO", 2, {"loss": "pg", "adv": "rloo"},
           verl={"algorithm.adv_estimator": "rloo", "policy_loss.loss_mode": "xxpo_pg"},
           note="TRL has it as a trainer of its own (RLOOTrainer); verl has the advantage, not the unclipped loss"),
    Recipe("Dr. GRPO", 3, {"loss": "dr_grpo", "adv": "dr_grpo"},
           trl={"loss_type": "dr_grpo", "scale_rewards": "none", "beta": 0.0},
           verl={"algorithm.adv_estimator": "grpo", "algorithm.norm_adv_by_std_in_grpo": False,
                 "policy_loss.loss_mode": "vanilla", "loss_agg_mode": "seq-mean-token-sum-norm",
                 "loss_scale_factor": T_MAX},
           verl_lab={"dual_clip_c": 3.0},
           note="both divide by a constant: TRL by max_completion_length, verl by loss_scale_factor (set it)"),
    Recipe("DAPO", 4, {"loss": "dapo", "adv": "grpo", "eps_high": 0.28},
           trl={"loss_type": "dapo", "epsilon_high": 0.28, "scale_rewards": "group", "beta": 0.0},
           verl={"algorithm.adv_estimator": "grpo", "policy_loss.loss_mode": "vanilla", "loss_agg_mode": "token-mean",
                 "clip_ratio_high": 0.28},
           verl_lab={"dual_clip_c": 3.0, "adv_eps": 1e-6},
           note="dynamic sampling: verl's DAPO recipe (filter_groups), not in TRL; TRL's token mean spans all "
                "processes and accumulation steps"),
    Recipe("GSPO", 5, {"loss": "gspo", "adv": "grpo", "eps_low": 3e-4, "eps_high": 4e-4},
           trl={"loss_type": "grpo", "importance_sampling_level": "sequence", "epsilon": 3e-4, "epsilon_high": 4e-4,
                "beta": 0.0},
           verl={"policy_loss.loss_mode": "gspo", "clip_ratio_low": 3e-4, "clip_ratio_high": 4e-4,
                 "loss_agg_mode": "seq-mean-token-mean"},
           note="verl clamps the log of the sequence ratio at 10 (equal below it)"),
    Recipe("LUSPO", 5, {"loss": "luspo", "adv": "grpo", "eps_low": 3e-4, "eps_high": 4e-4},
           trl={"loss_type": "luspo", "importance_sampling_level": "sequence", "epsilon": 3e-4, "epsilon_high": 4e-4,
                "beta": 0.0},
           note="verl has no LUSPO loss: loss_mode=xxpo_luspo"),
    Recipe("Decoupled PPO", 6, {"loss": "decoupled_ppo", "adv": "grpo", "staleness": 4},
           note="no native loss in either; verl's rollout correction (decoupled mode) weights by π_old/π_rollout "
                "for a sampler that differs, not for stale versions"),
    Recipe("A-3PO", 7, {"loss": "a3po", "adv": "grpo", "staleness": 4},
           note="in AReaL (prox_logp interpolation); neither TRL nor verl has it"),
    Recipe("SPPO (sequence-level)", 8, {"loss": "sppo", "adv": "sppo", "G": 1},
           note="needs a prompt-only critic: neither engine has one (the loss runs; the critic is the lab's)"),
    Recipe("SAPO", 9, {"loss": "sapo", "adv": "grpo", "tau_pos": 1.0, "tau_neg": 1.05},
           trl={"loss_type": "sapo", "sapo_temperature_pos": 1.0, "sapo_temperature_neg": 1.05, "beta": 0.0},
           verl={"policy_loss.loss_mode": "sapo", "tau_pos": 1.0, "tau_neg": 1.05, "loss_agg_mode": "seq-mean-token-mean"},
           note="TRL holds the temperatures in float32 (1.05 is 1.0499999523)"),
    Recipe("CISPO", 10, {"loss": "cispo", "adv": "grpo", "eps_low": 1.0, "eps_high": 4.0},
           trl={"loss_type": "cispo", "epsilon_high": 5.0, "beta": 0.0},
           verl={"policy_loss.loss_mode": "cispo", "clip_ratio_low": 1.0, "clip_ratio_high": 4.0,
                 "loss_agg_mode": "token-mean"},
           note="TRL's epsilon_high is an absolute cap on the weight (5.0 = 1 + 4.0) and it has no lower bound"),
    Recipe("GMPO", 10, {"loss": "gmpo", "adv": "grpo", "eps_low": 0.4, "eps_high": 0.4},
           verl={"policy_loss.loss_mode": "geo_mean", "clip_ratio_low": 0.4, "clip_ratio_high": 0.4,
                 "loss_agg_mode": "seq-mean-token-mean"},
           note="not in TRL: LabGRPOTrainer(lab_loss='gmpo')"),
    Recipe("DPPO-TV", 10, {"loss": "dppo_tv", "adv": "grpo", "eps_low": 0.15, "eps_high": 0.15},
           verl={"policy_loss.loss_mode": "dppo_tv", "clip_ratio_low": 0.15, "clip_ratio_high": 0.15,
                 "clip_ratio_c": 20.0, "loss_agg_mode": "token-mean"},
           note="verl reads clip_ratio_low/high as the divergence thresholds and clip_ratio_c as the cap on the "
                "ratio (its YAML default is 3, DPPO's is 20)"),
    Recipe("DPPO-KL", 10, {"loss": "dppo_kl", "adv": "grpo", "eps_low": 0.05, "eps_high": 0.05},
           verl={"policy_loss.loss_mode": "dppo_kl", "clip_ratio_low": 0.05, "clip_ratio_high": 0.05,
                 "clip_ratio_c": 20.0, "loss_agg_mode": "token-mean"}),
    Recipe("VESPO", 10, {"loss": "vespo", "adv": "grpo"},
           trl={"loss_type": "vespo", "beta": 0.0},
           note="verl has no VESPO loss: loss_mode=xxpo_vespo"),
    Recipe("M2PO", 10, {"loss": "m2po", "adv": "grpo", "staleness": 16},
           note="in neither engine (the paper's code is a verl fork)"),
]


def recipe(algorithm: str) -> Recipe:
    """The recipe of `algorithm` (its name as in the table); unknown names list the valid ones."""
    for r in RECIPES:
        if r.algorithm == algorithm:
            return r
    raise KeyError(f"no recipe for algorithm {algorithm!r}: must be one of {[r.algorithm for r in RECIPES]}")


def verl_overrides(r: Recipe, T_max: int | None = None) -> dict:
    """The recipe's verl settings as full Hydra paths, with the run's T_max in place of the placeholder."""
    if r.verl is None:
        return {ACTOR + "policy_loss.loss_mode": f"xxpo_{r.loss}"}
    return {key if key.startswith("algorithm.") else ACTOR + key: T_max if value == T_MAX else value
            for key, value in r.verl.items()}


def verl_actor_fields(r: Recipe, T_max: int) -> dict:
    """The recipe's verl actor settings (the fields of verl's actor config, without the `algorithm.` ones), with
    the run's T_max in place of the placeholder: what verl's actor hands its policy loss."""
    return {key.removeprefix(ACTOR): value for key, value in verl_overrides(r, T_max).items()
            if key.startswith(ACTOR)}


AT_SCALE = {
    "data.train_files": "$HOME/data/gsm8k/train.parquet", "data.val_files": "$HOME/data/gsm8k/test.parquet",
    "data.train_batch_size": 256, "data.max_prompt_length": 512, "data.max_response_length": 1024,
    "actor_rollout_ref.model.use_remove_padding": True,
    "actor_rollout_ref.actor.optim.lr": 1e-6,
    "actor_rollout_ref.actor.ppo_mini_batch_size": 64,
    "actor_rollout_ref.actor.use_dynamic_bsz": True,
    "actor_rollout_ref.actor.ppo_max_token_len_per_gpu": 16384,
    "actor_rollout_ref.actor.use_kl_loss": False,
    "actor_rollout_ref.rollout.name": "vllm", "actor_rollout_ref.rollout.n": 8,
    "actor_rollout_ref.rollout.gpu_memory_utilization": 0.6,
    "actor_rollout_ref.rollout.tensor_model_parallel_size": 1,
    "algorithm.rollout_correction.rollout_is": "token", "algorithm.rollout_correction.rollout_is_threshold": 2.0,
    "trainer.n_gpus_per_node": 8, "trainer.nnodes": 1, "trainer.total_epochs": 15,
    "trainer.logger": "[console]", "trainer.project_name": "xxpo_lab",
}
"""verl settings of a real run (a 0.5B model on GSM8K, one node of 8 GPUs), the knobs that matter at scale:
256 prompts × 8 responses per batch, 4 optimizer steps of 64 prompts each (ppo_mini_batch_size), micro-batches
packed by token count (use_dynamic_bsz, use_remove_padding), vLLM sampling, and the token-level truncated IS
correction of the sampler/trainer mismatch (ch. 10)."""


def verl_launch(r: Recipe, model: str = "Qwen/Qwen2.5-0.5B-Instruct") -> list[str]:
    """The Hydra overrides of `python3 -m verl.trainer.main_ppo` for recipe `r` at scale (`AT_SCALE`): its
    native settings, or loss_mode=xxpo_<name> (the lab's loss, registered by `pip install "xxpo-lab[verl]"`).
    Losses that weight by the sampler themselves or are not linear in A run without verl's IS correction."""
    from xxpo_lab.losses import get_loss

    spec = get_loss(r.loss)
    settings = AT_SCALE | {"actor_rollout_ref.model.path": model} | verl_overrides(r, T_max=1024)
    settings.setdefault("algorithm.adv_estimator", "grpo")
    if r.verl is None and (spec.own_is or not spec.linear or spec.prox == "recompute"):
        settings["algorithm.rollout_correction.rollout_is"] = None
    settings["trainer.experiment_name"] = r.loss
    return [f"{k}={_hydra(v)}" for k, v in settings.items()]


def _hydra(v) -> str:
    return "null" if v is None else str(v).lower() if isinstance(v, bool) else str(v)


def _fmt(d: dict) -> str:
    return ", ".join(f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}" for k, v in d.items())


def crosswalk_table() -> pd.DataFrame:
    """One row per algorithm: the lab's settings, TRL's and verl's native settings (or the integration), and
    the lab settings under which each engine equals the lab (blank: equal as the chapter runs it)."""
    rows = []
    for r in RECIPES:
        rows.append({
            "algorithm": r.algorithm, "ch.": r.chapter, "lab (Config)": _fmt(r.lab),
            "TRL (GRPOConfig)": _fmt(r.trl) if r.trl is not None else f"LabGRPOTrainer(lab_loss={r.loss!r})",
            "verl (overrides)": _fmt(r.verl) if r.verl is not None else f"policy_loss.loss_mode=xxpo_{r.loss}",
            "TRL = lab with": _fmt(r.trl_lab) if r.trl is not None else "-",
            "verl = lab with": _fmt(r.verl_lab) if r.verl is not None else "-",
            "note": r.note,
        })
    return pd.DataFrame(rows)
