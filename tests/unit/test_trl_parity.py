"""Parity of our losses with Hugging Face TRL's own GRPO loss (`GRPOTrainer._compute_loss`, TRL 1.16.0).

TRL's code is *called*, not re-derived: one real `GRPOTrainer` is built per module around a tiny
GPT-2, its `_get_per_token_logps_and_entropies` is replaced by a function that returns a given leaf
tensor `logp` [B, T], and `_compute_loss` builds the loss from it for each `loss_type` and
`importance_sampling_level`. Our `LOSSES[name].fn` gets a clone of the same tensors. Loss values and
d loss / d logp must agree.

Mapping (TRL loss_type / importance_sampling_level -> ours):
    grpo / token -> grpo           bnpo / token -> bnpo          dr_grpo / token -> dr_grpo (T_max = max_completion_length)
    dapo / token -> dapo           sapo / token -> sapo          grpo / sequence -> gspo
    luspo / sequence -> luspo
    cispo / token -> cispo (equal when eps_low = 1 and eps_high = TRL's cap - 1)
each with beta = 0 and beta > 0 (TRL's k3 KL with `use_bias_correction_kl=False`).

Documented differences (the project notes `trl-verl-differences.md`, ALGORITHMS.md §0.4 and §10.1), asserted:
  * CISPO: TRL clamps the detached ratio only above, at an absolute cap `epsilon_high`; we clip it to
    [1 - eps_low, 1 + eps_high]. With eps_low < 1 the two differ exactly on tokens with r < 1 - eps_low.
  * KL: TRL multiplies the per-token k3 by the (differentiable) ratio when `use_bias_correction_kl`
    is on, and it IS on by default in TRL 1.16.0 (`GRPOConfig.use_bias_correction_kl = True`); we never
    do. TRL(on) = ours + beta * aggregate(k3 * (r - 1)): equal values on-policy, different gradients.

Setting: one process, no gradient accumulation, train mode (so dapo's `num_items_in_batch`
normaliser, set to the batch's token count, makes dapo a token-mean like bnpo).

Precision: TRL's loss code runs in whatever dtype it is given, so everything here is float64. The
contract is 1e-6 (the issue's figure), checked as rtol = 1e-6; atol = 1e-10 only matters for entries
that are exactly zero on one side (clipped tokens, padding), where float64 agrees to ~1e-17.
Measured: every case agrees to ~1e-15 except SAPO with tau_neg = 1.05, which agrees to ~5e-8 relative:
TRL builds its temperatures with `torch.where(advantages > 0, float, float)`, a float32 tensor whatever
the input dtype, so its 1.05 is 1.0499999523 (relative error 4.5e-8). That is TRL's rounding, not a
difference in the formula (the case with exactly representable temperatures 4.0 / 0.5 agrees to ~1e-15).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import datasets  # TRL, datasets and transformers are pinned test dependencies: no skip without them
import pytest
import torch
import transformers
import trl

from xxpo_lab.batch import Batch
from xxpo_lab.blocks import aggregate, kl_k3, seq_log_ratio, token_ratio
from xxpo_lab.config import Config
from xxpo_lab.losses import LOSSES
from xxpo_lab.tasks import char_tokenizer

B, G, T = 8, 4, 6  # sequences, group size, padded completion width
T_MAX = 8  # max_completion_length (> T on purpose: dr_grpo divides by the configured maximum, not the width)
L = 5  # prompt width
LENGTHS = [6, 3, 1, 5, 6, 2, 4, 6]  # completion lengths; padding after them
ADV = [1.3, -0.7, 0.0, 0.4, -1.6, 0.9, -0.2, 1.1]  # both signs and a zero (SAPO's tau_neg covers A <= 0)
BETA = 0.04
TOL = {"rtol": 1e-6, "atol": 1e-10}
DTYPE = torch.float64


# -------------------------------------------------------------------------------------------------
# the TRL trainer (built once per module)


@pytest.fixture(scope="module")
def trainer(tmp_path_factory):
    """A real GRPOTrainer around a 1-layer GPT-2 saved to a tmp dir; no network, CPU, fp32 weights."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        root = tmp_path_factory.mktemp("trl_parity")
        model_dir = root / "model"
        tok = char_tokenizer()
        config = transformers.GPT2Config(n_layer=1, n_head=2, n_embd=16, n_positions=32, vocab_size=len(tok),
                                         pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                                         bos_token_id=tok.eos_token_id)
        torch.manual_seed(0)
        transformers.GPT2LMHeadModel(config).save_pretrained(model_dir)
        tok.save_pretrained(model_dir)
        args = trl.GRPOConfig(output_dir=str(root / "out"), per_device_train_batch_size=B, num_generations=G,
                              max_completion_length=T_MAX, report_to=[], use_cpu=True, bf16=False, beta=0.0,
                              logging_steps=1, save_strategy="no")
        dataset = datasets.Dataset.from_dict({"prompt": ["12+3=", "4+5=", "7+7=", "1+1="]})
        tr = trl.GRPOTrainer(model=str(model_dir), reward_funcs=lambda completions, **kw: [0.0] * len(completions),
                             args=args, train_dataset=dataset, processing_class=tok)
    # The plain path of `_compute_loss`: nothing else multiplies or adds to the per-token loss.
    assert tr.accelerator.num_processes == 1
    assert tr.args.gradient_accumulation_steps == 1 and tr.args.steps_per_generation == 1
    assert tr.top_entropy_quantile == 1.0 and tr.off_policy_mask_threshold is None
    assert not tr.use_vllm and not tr._entropy_bonus_enabled and not tr.aux_loss_enabled
    assert tr.max_completion_length == T_MAX
    tr.model.train()  # "train" mode: the accumulation normalisers apply (and are 1)
    tr.current_gradient_accumulation_steps = 1  # set by the training loop; no accumulation here
    return tr


# -------------------------------------------------------------------------------------------------
# data


@dataclass(frozen=True)
class Data:
    logp: torch.Tensor  # [B, T] current log-probs (cloned into a leaf per call)
    old: torch.Tensor  # [B, T] old / proximal = behaviour log-probs
    ref: torch.Tensor  # [B, T] reference log-probs
    mask: torch.Tensor  # [B, T] long, 1 on completion tokens
    adv: torch.Tensor  # [B]
    entropy: torch.Tensor  # [B, T]
    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    completion_ids: torch.Tensor


SCALES = {"onpolicy": 0.0, "small": 0.05, "large": 0.8}  # std of the log-ratio logp - old


def make_data(scale: str, seed: int = 0) -> Data:
    gen = torch.Generator().manual_seed(seed)
    mask = (torch.arange(T)[None, :] < torch.tensor(LENGTHS)[:, None]).long()
    old = -3.0 * torch.rand(B, T, generator=gen, dtype=DTYPE) - 0.01
    delta = SCALES[scale] * torch.randn(B, T, generator=gen, dtype=DTYPE)
    if scale == "large":  # make every branch of every clip fire on some masked token
        delta[0, 0] = 2.0  # A > 0, r = 7.4: PPO high clip, above CISPO's cap 5
        delta[1, 1] = -2.0  # A < 0, r = 0.14: PPO low clip, below CISPO's 1 - eps_low when eps_low < 1
        delta[4, 0] = 1.5  # A < 0, r = 4.5: not clipped by PPO (no dual clip in TRL or by default in ours)
        delta[5, :] += 0.6  # A > 0: the whole sequence moves up (GSPO high clip)
        delta[6, :] -= 0.6  # A < 0: the whole sequence moves down (GSPO low clip)
    logp = old + delta
    ref = old + 0.3 * torch.randn(B, T, generator=gen, dtype=DTYPE)
    return Data(
        logp=logp, old=old, ref=ref, mask=mask, adv=torch.tensor(ADV, dtype=DTYPE),
        entropy=torch.rand(B, T, generator=gen, dtype=DTYPE),
        prompt_ids=torch.randint(2, 12, (B, L), generator=gen),
        prompt_mask=torch.ones(B, L, dtype=torch.long),
        completion_ids=torch.randint(2, 12, (B, T), generator=gen) * mask,
    )


def our_batch(d: Data) -> Batch:
    maskf = d.mask.to(DTYPE)
    lengths = d.mask.sum(-1)
    return Batch(prompt_ids=d.prompt_ids, prompt_mask=d.prompt_mask, resp_ids=d.completion_ids, mask=maskf,
                 behav_logp=d.old.clone(), lengths=lengths, truncated=lengths >= T_MAX,
                 version=torch.zeros(B, dtype=torch.long), adv=d.adv[:, None] * maskf, prox_logp=d.old.clone(),
                 ref_logp=d.ref.clone())


# -------------------------------------------------------------------------------------------------
# the cases


@dataclass(frozen=True)
class Case:
    ours: str  # key of LOSSES
    loss_type: str  # TRL loss_type
    level: str  # TRL importance_sampling_level
    agg: str  # our aggregation mode of this loss (for the KL-correction difference)
    eps_low: float = 0.2
    eps_high: float = 0.28  # asymmetric, so a swapped pair of bounds fails
    tau_pos: float = 1.0
    tau_neg: float = 1.05

    @property
    def trl_epsilon_high(self) -> float:
        # TRL's cispo reads epsilon_high as an absolute cap on the ratio; the others as 1 + eps_high
        return 1.0 + self.eps_high if self.loss_type == "cispo" else self.eps_high

    @property
    def id(self) -> str:
        if self.ours == "sapo":
            return f"sapo[tau={self.tau_pos}/{self.tau_neg}]"
        return f"{self.ours}[{self.loss_type}/{self.level},eps={self.eps_low}/{self.eps_high}]"


CASES = [
    Case("grpo", "grpo", "token", "seq-mean-token-mean"),
    Case("bnpo", "bnpo", "token", "token-mean"),
    Case("dr_grpo", "dr_grpo", "token", "seq-mean-token-sum-norm"),
    Case("dapo", "dapo", "token", "token-mean"),
    Case("gspo", "grpo", "sequence", "seq-mean-token-mean"),
    Case("gspo", "grpo", "sequence", "seq-mean-token-mean", eps_low=3e-4, eps_high=4e-4),  # the paper's range
    Case("luspo", "luspo", "sequence", "seq-mean-token-sum"),
    Case("luspo", "luspo", "sequence", "seq-mean-token-sum", eps_low=3e-4, eps_high=4e-4),
    Case("sapo", "sapo", "token", "seq-mean-token-mean"),  # TRL's defaults (TRL holds 1.05 in float32)
    Case("sapo", "sapo", "token", "seq-mean-token-mean", tau_pos=4.0, tau_neg=0.5),  # a swap would show
    Case("cispo", "cispo", "token", "token-mean", eps_low=1.0, eps_high=4.0),  # TRL cap 5.0, no lower bound
    Case("vespo", "vespo", "token", "token-mean"),  # TRL's default k/λ; its W is against old = our sampler
]


def our_cfg(case: Case, beta: float, **overrides) -> Config:
    return Config(loss=case.ours, T_max=T_MAX, eps_low=case.eps_low, eps_high=case.eps_high, tau_pos=case.tau_pos,
                  tau_neg=case.tau_neg, beta=beta, kl_estimator="k3", kl_in="loss", **overrides)


def run_trl(trainer, monkeypatch, case: Case, d: Data, beta: float, bias_correction_kl: bool = False,
            epsilon_high: float | None = None, delta: float | None = None):
    """TRL's loss and d loss / d logp, from `GRPOTrainer._compute_loss` on the leaf `logp`."""
    logp = d.logp.clone().requires_grad_(True)
    seen = []

    def fake_logps(model, input_ids, attention_mask, logits_to_keep, **kwargs):
        seen.append((input_ids.shape, logits_to_keep))
        return logp, d.entropy.clone(), None

    monkeypatch.setattr(trainer, "_get_per_token_logps_and_entropies", fake_logps)
    monkeypatch.setattr(trainer, "loss_type", case.loss_type)
    monkeypatch.setattr(trainer, "importance_sampling_level", case.level)
    monkeypatch.setattr(trainer, "beta", beta)
    monkeypatch.setattr(trainer, "epsilon_low", case.eps_low)
    monkeypatch.setattr(trainer, "epsilon_high", case.trl_epsilon_high if epsilon_high is None else epsilon_high)
    monkeypatch.setattr(trainer.args, "delta", delta)
    monkeypatch.setattr(trainer.args, "use_bias_correction_kl", bias_correction_kl)
    monkeypatch.setattr(trainer.args, "sapo_temperature_pos", case.tau_pos)
    monkeypatch.setattr(trainer.args, "sapo_temperature_neg", case.tau_neg)
    inputs = {
        "prompt_ids": d.prompt_ids, "prompt_mask": d.prompt_mask,
        "completion_ids": d.completion_ids, "completion_mask": d.mask,
        "advantages": d.adv.clone(),
        "old_per_token_logps": d.old.clone(),
        "ref_per_token_logps": d.ref.clone(),
        "num_items_in_batch": d.mask.sum(),  # one process, no accumulation: the batch's token count
    }
    loss = trainer._compute_loss(trainer.model, inputs)
    assert seen == [((B, L + T), T)]  # our fake replaced the forward pass, called as TRL does
    (grad,) = torch.autograd.grad(loss, logp)
    return loss.detach(), grad


def run_ours(case: Case, d: Data, beta: float, **overrides):
    logp = d.logp.clone().requires_grad_(True)
    loss, info = LOSSES[case.ours].fn(logp, our_batch(d), our_cfg(case, beta, **overrides))
    (grad,) = torch.autograd.grad(loss, logp)
    return loss.detach(), grad, info


def ratio_of(case: Case, logp: torch.Tensor, d: Data) -> torch.Tensor:
    """The ratio TRL multiplies the KL by: per token, or GSPO's sequence ratio broadcast along T."""
    if case.level == "sequence":
        return torch.exp(seq_log_ratio(logp, d.old, d.mask.to(DTYPE))).expand_as(logp)
    return token_ratio(logp, d.old)


# -------------------------------------------------------------------------------------------------
# equality


def test_the_trl_under_test_is_the_pinned_one():
    """The parity cases and their documented differences are TRL 1.16.0's (requirements.txt pins it)."""
    pins = dict(line.split("==") for line in (Path(__file__).parents[2] / "requirements.txt").read_text().splitlines()
                if "==" in line and not line.startswith("#"))
    assert trl.__version__ == pins["trl"] == "1.16.0"


@pytest.mark.parametrize("beta", [0.0, BETA], ids=["no_kl", "kl"])
@pytest.mark.parametrize("scale", list(SCALES))
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_loss_and_grad_equal_trl(trainer, monkeypatch, case, scale, beta):
    d = make_data(scale)
    trl_loss, trl_grad = run_trl(trainer, monkeypatch, case, d, beta, bias_correction_kl=False)
    loss, grad, _ = run_ours(case, d, beta)
    assert trl_loss.dtype == DTYPE and trl_grad.dtype == DTYPE  # TRL's code kept float64 throughout
    torch.testing.assert_close(loss, trl_loss, **TOL)
    torch.testing.assert_close(grad, trl_grad, **TOL)
    assert torch.all(grad[d.mask == 0] == 0)  # padding carries no gradient
    assert grad.abs().max() > 1e-4  # not a vacuous comparison of zeros


def test_large_data_exercises_every_clip_branch():
    """The 'large' data is not vacuous: both PPO clip branches, unclipped tokens with r far from 1,
    GSPO sequences clipped on both sides and in-band, and CISPO ratios above the cap and below 0.8."""
    d = make_data("large")
    m = d.mask.bool()
    _, _, info = run_ours(CASES[0], d, 0.0)  # grpo, eps 0.2 / 0.28
    assert (info.clip_low & m).any() and (info.clip_high & m).any()
    assert (~info.clip_low & ~info.clip_high & info.out_of_band & m).any()  # A < 0, r ≫ 1: unclipped
    _, _, info = run_ours(CASES[4], d, 0.0)  # gspo, eps 0.2 / 0.28
    seq_low, seq_high = info.clip_low[:, 0], info.clip_high[:, 0]
    assert seq_low.any() and seq_high.any() and (~seq_low & ~seq_high).any()
    r = torch.exp(d.logp - d.old)
    assert (r[m] > 5.0).any() and (r[m] < 0.8).any()


@pytest.mark.parametrize("beta", [0.0, BETA], ids=["no_kl", "kl"])
@pytest.mark.parametrize("c", [3.0, 1.5])
@pytest.mark.parametrize("case", [c for c in CASES if c.level == "token" and c.loss_type not in ("cispo", "vespo")
                                  and c.ours != "sapo"], ids=lambda c: c.id)
def test_trl_delta_is_our_dual_clip(trainer, monkeypatch, case, c, beta):
    """TRL's two-sided clipping (`delta`, INTELLECT-2) clamps the ratio at delta before the min; for A < 0 and
    r > delta that is -delta·A with no gradient, dual clip's cap at c = delta; for A > 0 the upper clip already
    binds (delta > 1 + eps). So TRL(delta = c) = ours(dual_clip_c = c), value and gradient (ch. 6)."""
    d = make_data("large")
    trl_loss, trl_grad = run_trl(trainer, monkeypatch, case, d, beta, delta=c)
    loss, grad, info = run_ours(case, d, beta, dual_clip_c=c)
    assert info.dual_clip.any()  # the cap binds on this data (A < 0, r = 4.5 > c)
    torch.testing.assert_close(loss, trl_loss, **TOL)
    torch.testing.assert_close(grad, trl_grad, **TOL)
    plain, _, _ = run_ours(case, d, beta)
    assert not torch.allclose(plain, trl_loss)  # without dual clip we are not TRL(delta)


# -------------------------------------------------------------------------------------------------
# documented difference 1: CISPO's bounds


@pytest.mark.parametrize("beta", [0.0, BETA], ids=["no_kl", "kl"])
def test_cispo_lower_bound_is_ours_only(trainer, monkeypatch, beta):
    """TRL: w = min(r, epsilon_high) (absolute cap, no lower bound). Ours: w = clip(r, 1-eps_low, 1+eps_high).
    With eps_low = 0.2 < 1 the weights differ exactly where r < 0.8, by (0.8 - r), and nowhere else."""
    case = Case("cispo", "cispo", "token", "token-mean", eps_low=0.2, eps_high=4.0)  # TRL cap 1 + 4 = 5
    d = make_data("large")
    trl_loss, trl_grad = run_trl(trainer, monkeypatch, case, d, beta)
    loss, grad, _ = run_ours(case, d, beta)
    r = torch.exp(d.logp - d.old)
    maskf = d.mask.to(DTYPE)
    below = (r < 1.0 - case.eps_low) & d.mask.bool()
    assert below.any()
    # the difference: ours raises the detached weight of tokens below the floor to 1 - eps_low
    extra_w = (torch.clamp(r, min=1.0 - case.eps_low) - r) * below
    adv = d.adv[:, None] * maskf
    n = maskf.sum()
    torch.testing.assert_close(grad - trl_grad, -extra_w * adv / n, **TOL)
    torch.testing.assert_close(loss - trl_loss, (-extra_w * adv * d.logp).sum() / n, **TOL)
    torch.testing.assert_close(grad[~below], trl_grad[~below], **TOL)  # equal everywhere else
    assert (grad - trl_grad)[below & (adv != 0)].abs().min() > 1e-6  # and it is really there
    # with no lower bound (eps_low = 1) we are TRL again
    loss1, grad1, _ = run_ours(replace(case, eps_low=1.0), d, beta)
    torch.testing.assert_close(loss1, trl_loss, **TOL)
    torch.testing.assert_close(grad1, trl_grad, **TOL)


# -------------------------------------------------------------------------------------------------
# documented difference 2: TRL's bias-corrected KL (on by default in TRL 1.16.0)


def test_trl_bias_corrected_kl_is_on_by_default():
    """TRL 1.16.0 multiplies k3 by the ratio unless told not to; our losses never do."""
    assert trl.GRPOConfig.__dataclass_fields__["use_bias_correction_kl"].default is True


@pytest.mark.parametrize("scale", list(SCALES))
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_bias_corrected_kl_is_k3_times_ratio(trainer, monkeypatch, case, scale):
    """TRL(use_bias_correction_kl=True) = ours + beta * aggregate(k3 * (r - 1)), value and gradient,
    with r TRL's ratio (per token, or GSPO's sequence ratio). On-policy (r = 1) the values agree but the
    gradients do not: r is differentiable, d r / d logp = 1, so TRL's KL gradient gains beta * k3 per token."""
    d = make_data(scale)
    trl_loss, trl_grad = run_trl(trainer, monkeypatch, case, d, BETA, bias_correction_kl=True)
    loss, grad, _ = run_ours(case, d, BETA)
    logp = d.logp.clone().requires_grad_(True)
    corr = BETA * aggregate(kl_k3(logp, d.ref) * (ratio_of(case, logp, d) - 1.0), d.mask.to(DTYPE), case.agg, T_MAX)
    (corr_grad,) = torch.autograd.grad(corr, logp)
    torch.testing.assert_close(loss + corr.detach(), trl_loss, **TOL)
    torch.testing.assert_close(grad + corr_grad, trl_grad, **TOL)
    assert (grad - trl_grad).abs().max() > 1e-5  # the gradients really differ, on-policy too
    if scale == "onpolicy":
        torch.testing.assert_close(loss, trl_loss, **TOL)


# -------------------------------------------------------------------------------------------------
# the sampler/trainer mismatch corrections (ch. 10): TRL's four modes and DeepSeek-V3.2's sequence mask


def trl_is_ratio(mode: str, clip_min, clip_max, old: torch.Tensor, sampling: torch.Tensor, mask: torch.Tensor):
    """TRL's own lines that turn (old, sampling) log-probs into `importance_sampling_ratio`: cut out of
    `GRPOTrainer._generate_and_score_completions` (TRL 1.16.0) and executed as they are."""
    import inspect
    import math
    import textwrap
    from types import SimpleNamespace

    src = inspect.getsource(trl.GRPOTrainer._generate_and_score_completions)
    start = src.index("                mask = completion_mask if tool_mask is None else completion_mask * tool_mask")
    end = src.index("            # Compute the per-token log probabilities for the reference model", start)
    block = textwrap.dedent(src[start:end])
    ns = {"torch": torch, "math": math, "completion_mask": mask, "tool_mask": None, "old_per_token_logps": old,
          "sampling_per_token_logps": sampling,
          "self": SimpleNamespace(vllm_importance_sampling_mode=mode, vllm_importance_sampling_clip_min=clip_min,
                                  vllm_importance_sampling_clip_max=clip_max)}
    exec(block, ns)  # TRL's own code (pinned by requirements.txt), run as it is
    return ns["vllm_importance_sampling_ratio"]


def run_trl_with_inputs(trainer, monkeypatch, case: Case, d: Data, **extra):
    """run_trl (no KL) with `extra` added to TRL's inputs, as its generation step adds them with vLLM."""
    original = trainer._compute_loss
    monkeypatch.setattr(trainer, "_compute_loss",
                        lambda model, inputs: original(model, inputs | {k: v.clone() for k, v in extra.items()}))
    return run_trl(trainer, monkeypatch, case, d, 0.0)


def run_ours_on(case: Case, d: Data, b: Batch):
    """Our loss (no KL) and d loss / d logp on a given batch."""
    logp = d.logp.clone().requires_grad_(True)
    loss, _ = LOSSES[case.ours].fn(logp, b, our_cfg(case, 0.0))
    (grad,) = torch.autograd.grad(loss, logp)
    return loss.detach(), grad


IS_CASES = [("token_truncate", None, 2.0), ("token_truncate", 0.5, 3.0), ("token_mask", 0.5, 2.0),
            ("token_mask", None, 3.0), ("sequence_truncate", None, 3.0), ("sequence_mask", None, 3.0),
            ("sequence_mask", 0.5, 3.0)]


@pytest.mark.parametrize("mode,clip_min,clip_max", IS_CASES)
def test_is_weight_is_trls_importance_sampling_ratio(mode, clip_min, clip_max):
    from xxpo_lab.mismatch import is_weight

    d = make_data("large")
    maskf = d.mask.to(DTYPE)
    sampler = d.old + 0.8 * torch.randn(B, T, generator=torch.Generator().manual_seed(1), dtype=DTYPE)
    theirs = trl_is_ratio(mode, clip_min, clip_max, d.old, sampler, d.mask)
    ours = is_weight(d.old, sampler, maskf, mode, clip_min, clip_max)
    torch.testing.assert_close(ours * maskf, theirs.expand_as(ours) * maskf, **TOL)
    if mode.endswith("mask"):
        assert ((ours == 0) & d.mask.bool()).any() and ((ours > 0) & d.mask.bool()).any()  # both kinds present
    else:
        assert (((ours == clip_max) | (ours == (clip_min or -1))) & d.mask.bool()).any()  # a bound binds


@pytest.mark.parametrize("mode,clip_min,clip_max", IS_CASES[:1] + IS_CASES[2:3] + IS_CASES[5:6])
@pytest.mark.parametrize("case", [c for c in CASES if c.ours not in ("vespo",)], ids=lambda c: c.id)
def test_is_mode_weighting_the_advantage_is_trls_weighted_loss(trainer, monkeypatch, case, mode, clip_min, clip_max):
    """Our loop multiplies the advantage by the correction weight (`loop.prepare`); TRL multiplies the per-token
    loss. For every loss that allows is_mode (Loss.linear) the two are the same, value and gradient."""
    from xxpo_lab.mismatch import is_weight

    assert LOSSES[case.ours].linear
    d = make_data("small")
    maskf = d.mask.to(DTYPE)
    sampler = d.old + 0.4 * torch.randn(B, T, generator=torch.Generator().manual_seed(1), dtype=DTYPE)
    w = is_weight(d.old, sampler, maskf, mode, clip_min, clip_max)
    monkeypatch.setattr(trainer, "use_vllm", True)
    monkeypatch.setattr(trainer, "vllm_importance_sampling_correction", True)
    trl_loss, trl_grad = run_trl_with_inputs(trainer, monkeypatch, case, d, importance_sampling_ratio=w)
    b = our_batch(d)
    loss, grad = run_ours_on(case, d, replace(b, adv=b.adv * w))
    torch.testing.assert_close(loss, trl_loss, **TOL)
    torch.testing.assert_close(grad, trl_grad, **TOL)


@pytest.mark.parametrize("delta", [0.0, 0.05, 0.5])
@pytest.mark.parametrize("case", [CASES[0], CASES[3], CASES[4]], ids=lambda c: c.id)
def test_off_policy_sequence_mask_is_trls(trainer, monkeypatch, case, delta):
    """DeepSeek-V3.2's mask: ours (`mismatch.off_policy_sequence_mask`, applied by zeroing the advantage in
    `loop.update`) against TRL's `off_policy_mask_threshold`, with the sampler's log-probs given to TRL."""
    from xxpo_lab.mismatch import off_policy_sequence_mask

    d = make_data("large")
    maskf = d.mask.to(DTYPE)
    sampler = d.old + 0.3 * torch.rand(B, T, generator=torch.Generator().manual_seed(2), dtype=DTYPE)
    keep = off_policy_sequence_mask(d.adv[:, None] * maskf, d.logp, sampler, maskf, delta)
    theirs = trl.GRPOTrainer.get_off_policy_mask(d.adv[:, None], d.logp, sampler, maskf, delta)
    torch.testing.assert_close(keep, theirs, **TOL)
    if delta == 0.05:
        assert (keep == 0).any() and (keep == 1).any()
    monkeypatch.setattr(trainer, "off_policy_mask_threshold", delta)
    trl_loss, trl_grad = run_trl_with_inputs(trainer, monkeypatch, case, d, sampling_per_token_logps=sampler)
    b = replace(our_batch(d), behav_logp=sampler)
    loss, grad = run_ours_on(case, d, replace(b, adv=b.adv * keep))
    torch.testing.assert_close(loss, trl_loss, **TOL)
    torch.testing.assert_close(grad, trl_grad, **TOL)


def test_vespo_weight_is_trls_gamma_weight():
    """VESPO's φ(W) from TRL's own static `get_gamma_weights`, on ratios far from 1 both ways."""
    d = make_data("large")
    maskf = d.mask.to(DTYPE)
    adv = d.adv[:, None]
    theirs = trl.GRPOTrainer.get_gamma_weights(adv, d.logp - d.old, maskf, None)
    _, _, info = run_ours(Case("vespo", "vespo", "token", "token-mean"), d, 0.0)
    torch.testing.assert_close(info.phi[:, :1], theirs, **TOL)
    assert (theirs < 0.5).any() and (theirs > 0.9).any()


@pytest.mark.parametrize("scale", list(SCALES))
@pytest.mark.parametrize("case", [c for c in CASES if c.level == "token" and c.ours != "vespo"], ids=lambda c: c.id)
def test_kl_is_correct_is_trls_bias_corrected_kl(trainer, monkeypatch, case, scale):
    """Our kl_is_correct = TRL's use_bias_correction_kl for token-level losses: k3 times the token ratio."""
    d = make_data(scale)
    trl_loss, trl_grad = run_trl(trainer, monkeypatch, case, d, BETA, bias_correction_kl=True)
    loss, grad, _ = run_ours(case, d, BETA, kl_is_correct=True)
    torch.testing.assert_close(loss, trl_loss, **TOL)
    torch.testing.assert_close(grad, trl_grad, **TOL)
