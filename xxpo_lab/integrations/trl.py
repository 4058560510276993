"""Any registered lab loss inside TRL's `GRPOTrainer`: `LabGRPOTrainer(..., lab_loss="a3po")`.

TRL samples, scores and computes advantages as it always does; the loss of each micro-batch is the lab's
`LOSSES[lab_loss]`, the same function the chapters show and test, on TRL's own tensors:

    TRL's input                          the lab's Batch
    per-token log-probs (with grad)      logp
    completion_mask (× tool_mask)        mask
    advantages [B] or [B, T]             adv, along T, 0 on padding
    old_per_token_logps                  prox_logp (π_old; the detached log-probs when TRL keeps none)
    sampling_per_token_logps             behav_logp (vLLM's log-probs; π_old otherwise)
    ref_per_token_logps                  ref_logp (when beta > 0)
    importance_sampling_ratio (vLLM)     multiplies the advantage, as the lab's is_mode does (ch. 10)

The lab's Config comes from TRL's arguments (`lab_config` overrides or adds any field):

    epsilon, epsilon_high       eps_low, eps_high (as TRL reads them: the ratio clip, or CISPO's bounds, ...)
    beta, use_bias_correction_kl  beta (k3 in the loss), kl_is_correct
    num_generations             G
    max_completion_length       T_max (Dr. GRPO's constant normaliser)
    sapo_temperature_pos/neg    tau_pos, tau_neg
    vespo_k_pos, ...            vespo_k_pos, vespo_lambda_pos, vespo_k_neg, vespo_lambda_neg
    off_policy_mask_threshold   off_policy_mask (DeepSeek-V3.2's mask, applied as the lab's loop applies it)

How it differs from TRL's own losses: each lab loss aggregates its micro-batch itself (its own token-mean or
per-sequence mean), and the result is divided by the gradient-accumulation steps, where TRL's dapo/cispo/vespo
divide by the token count of the whole generation batch. With one micro-batch per step the two agree (a test
checks SAPO's loss and gradient against TRL's own). Metrics: TRL's names where TRL logs the same quantity
(`clip_ratio/low_mean`, `clip_ratio/high_mean`, `clip_ratio/region_mean`, `entropy`, `kl`), the lab's glossary
names under `xxpo/` otherwise (`xxpo/gate/mean`, `xxpo/is/weight_max`, ...), per process.

Settings the lab loss cannot honour fail at construction: `importance_sampling_level="sequence"` (the lab loss
defines its own ratio: use lab_loss="gspo"), `top_entropy_quantile < 1`, an entropy bonus, Liger kernels, and
vLLM's importance-sampling correction with a loss that weights by the sampler itself or is not linear in A.
"""

from __future__ import annotations

import torch

from xxpo_lab.batch import Batch
from xxpo_lab.config import Config, ConfigError
from xxpo_lab.diagnostics import loss_metrics
from xxpo_lab.integrations import require
from xxpo_lab.loop import loss_of
from xxpo_lab.losses import get_loss
from xxpo_lab.mismatch import off_policy_sequence_mask

trl = require("trl", "trl")

TRL_METRIC_NAMES = {
    "clip/low_frac": "clip_ratio/low_mean",
    "clip/high_frac": "clip_ratio/high_mean",
    "clip/active_frac": "clip_ratio/region_mean",
}
"""Lab metrics TRL logs under its own name; every other lab metric is logged as xxpo/<name>."""


def lab_config(args, lab_loss: str, overrides: dict | None = None) -> Config:
    """The lab Config a `GRPOConfig` asks for, with `overrides` (Config fields) on top. The lab's task is set to
    the smallest one (copying 2 characters), whose verifier is never used here (TRL scores the responses); it
    only needs max_completion_length >= 3."""
    if args.max_completion_length < 3:
        raise ConfigError(f"GRPOConfig.max_completion_length = {args.max_completion_length!r} is not allowed with a "
                          "lab loss: must be >= 3")
    fields = {
        "loss": lab_loss, "task": "copy", "difficulty": 2,
        "eps_low": args.epsilon, "eps_high": args.epsilon_high if args.epsilon_high is not None else args.epsilon,
        "beta": args.beta, "kl_estimator": "k3", "kl_in": "loss", "kl_is_correct": bool(args.use_bias_correction_kl),
        "G": args.num_generations, "T_max": args.max_completion_length,
        "tau_pos": args.sapo_temperature_pos, "tau_neg": args.sapo_temperature_neg,
        "vespo_k_pos": args.vespo_k_pos, "vespo_lambda_pos": args.vespo_lambda_pos,
        "vespo_k_neg": args.vespo_k_neg, "vespo_lambda_neg": args.vespo_lambda_neg,
        "off_policy_mask": args.off_policy_mask_threshold,
    }
    return Config(**(fields | (overrides or {})))


class LabGRPOTrainer(trl.GRPOTrainer):
    """TRL's GRPOTrainer with its loss replaced by the lab's `LOSSES[lab_loss]` (everything else is TRL's).

    Args: every GRPOTrainer argument, plus lab_loss (a name in `xxpo_lab.LOSSES`) and lab_config (a dict of
    Config fields: e.g. {"dual_clip_c": 3.0} for PPO's dual clip, {"prox_interp": "linear"} for A-3PO).
    """

    def __init__(self, *args, lab_loss: str, lab_config: dict | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.lab_cfg = _lab_config_for(self, lab_loss, lab_config)
        self.lab_spec = get_loss(lab_loss)

    def _compute_loss(self, model, inputs):
        prompt_ids, prompt_mask = inputs["prompt_ids"], inputs["prompt_mask"]
        completion_ids = inputs["completion_ids"]
        completion_mask = inputs["completion_mask"]
        mask = completion_mask
        if "tool_mask" in inputs:  # tool output is context, not the policy's action
            mask = completion_mask * inputs["tool_mask"]
        input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
        attention_mask = torch.cat([prompt_mask, completion_mask], dim=1)
        extra = {k: inputs[k] for k in _FORWARD_KEYS if inputs.get(k) is not None}
        logp, entropy, _ = self._get_per_token_logps_and_entropies(
            model, input_ids, attention_mask, completion_ids.size(1),
            compute_entropy=True, **extra)
        b = self._batch(inputs, logp, mask.to(logp.dtype))
        kappa = self.lab_cfg.off_policy_mask
        if kappa is not None:  # as the lab's loop: drop drifted negative responses
            keep = off_policy_sequence_mask(b.adv, logp, b.behav_logp, b.mask, kappa)
            b.adv = b.adv * keep
        loss, info = loss_of(self.lab_cfg.loss, logp, b, self.lab_cfg)
        mode = "train" if self.model.training else "eval"
        self._log_lab_metrics(mode, info, logp.detach(), entropy, b)
        if mode == "eval":
            return loss
        return loss / self.current_gradient_accumulation_steps

    def _batch(self, inputs: dict, logp: torch.Tensor, mask: torch.Tensor) -> Batch:
        """TRL's tensors as the lab's Batch (the field table in the module docstring)."""
        adv = inputs["advantages"]
        adv = (adv[:, None] if adv.dim() == 1 else adv).to(logp.dtype) * mask  # [B, T]
        prox = inputs.get("old_per_token_logps")
        prox = logp.detach() if prox is None else prox
        behav = inputs.get("sampling_per_token_logps")
        if behav is None:
            behav = prox
        else:  # vLLM's NaN (no log-prob recorded): no evidence of a mismatch
            behav = torch.where(torch.isnan(behav), prox, behav)
        if inputs.get("importance_sampling_ratio") is not None:
            adv = adv * inputs["importance_sampling_ratio"]  # vLLM's correction, per token
        gap = torch.ones(mask.shape[0], dtype=torch.long, device=mask.device)
        return Batch.of(mask, adv=adv, prox_logp=prox, behav_logp=behav,
                        ref_logp=inputs.get("ref_per_token_logps"), version_gap=gap)

    def _log_lab_metrics(self, mode: str, info, logp: torch.Tensor, entropy: torch.Tensor, b: Batch) -> None:
        metrics = self._metrics[mode]
        for name, value in loss_metrics(info, logp, b.mask).items():
            metrics[TRL_METRIC_NAMES.get(name, f"xxpo/{name}")].append(value)
        n = b.mask.sum().clamp(min=1.0)
        metrics["entropy"].append(((entropy * b.mask).sum() / n).item())
        if b.ref_logp is not None:
            log_rho = b.ref_logp - logp
            metrics["kl"].append((((log_rho.exp() - 1 - log_rho) * b.mask).sum() / n).item())


_FORWARD_KEYS = ("pixel_values", "image_grid_thw", "num_images", "pixel_attention_mask", "spatial_shapes",
                 "num_tiles", "image_sizes", "token_type_ids", "mm_token_type_ids", "image_position_ids")
"""Optional model inputs TRL passes to its forward pass (multimodal models); passed on unchanged."""


def _lab_config_for(trainer, lab_loss: str, overrides: dict | None) -> Config:
    """The lab Config for this trainer, after refusing the TRL settings the lab loss cannot honour."""
    args = trainer.args
    refusals = [
        (args.importance_sampling_level != "token", "importance_sampling_level", args.importance_sampling_level,
         "must be 'token': the lab loss defines its own ratio (for GSPO's sequence ratio use lab_loss='gspo')"),
        (trainer.top_entropy_quantile < 1.0, "top_entropy_quantile", trainer.top_entropy_quantile,
         "must be 1.0: the lab losses do not mask low-entropy tokens"),
        (trainer._entropy_bonus_enabled, "entropy_coef", getattr(args, "entropy_coef", None),
         "must be 0 (and adaptive entropy off): the lab losses add no entropy bonus"),
        (bool(args.use_liger_kernel), "use_liger_kernel", args.use_liger_kernel,
         "must be False: Liger fuses TRL's own loss, not the lab's"),
    ]
    for refused, name, value, allowed in refusals:
        if refused:
            raise ConfigError(f"GRPOConfig.{name} = {value!r} is not allowed with lab_loss={lab_loss!r}: {allowed}")
    cfg = lab_config(args, lab_loss, overrides)
    spec = get_loss(cfg.loss)
    if trainer.use_vllm and trainer.vllm_importance_sampling_correction and (
            spec.own_is or not spec.linear or spec.prox == "recompute"):
        raise ConfigError(f"GRPOConfig.vllm_importance_sampling_correction = True is not allowed with lab_loss="
                          f"{lab_loss!r}: the loss weights its tokens by the sampler itself or is not linear in the "
                          "advantage; turn the correction off")
    return cfg
