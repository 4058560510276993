"""Identities and invariances of the named losses in `xxpo_lab.losses` (float64 throughout).

(a) special-case identities (STYLE.md "Tests", anchor §F), (b) invariance to masked values and to
minibatch splits, (c) the loss contract, (d) the expected gradients of the KL estimators (ALGORITHMS.md §0.4).
"""

import math
from dataclasses import fields, replace

import pytest
import torch

from xxpo_lab.batch import Batch, group_rows
from xxpo_lab.blocks import KL_ESTIMATORS, aggregate, clip_surrogate, token_ratio
from xxpo_lab.config import Config, resolve
from xxpo_lab.losses import LOSSES, LossInfo, get_loss

F64 = torch.float64


def make_batch(mask, **fields):
    """A Batch around `mask` [B, T]; fields no loss reads (prompt_ids, resp_ids, ...) are dummies."""
    B, T = mask.shape
    fields.setdefault("behav_logp", torch.zeros(B, T, dtype=mask.dtype))
    return Batch(prompt_ids=torch.zeros(B, 1, dtype=torch.long), prompt_mask=torch.ones(B, 1, dtype=torch.long),
                 resp_ids=torch.zeros(B, T, dtype=torch.long), mask=mask, lengths=mask.sum(-1).long(),
                 truncated=torch.zeros(B, dtype=torch.bool), version=torch.zeros(B, dtype=torch.long), **fields)


def random_batch(P=3, G=2, T=6, seed=0, lengths=None, noise=0.3):
    """Off-policy batch: ragged lengths, one advantage per sequence, logp = behav_logp + noise.
    Values under the mask are 0, as the sampler leaves them. Returns (batch, logp values)."""
    gen = torch.Generator().manual_seed(seed)
    B = P * G
    lengths = torch.randint(1, T + 1, (B,), generator=gen) if lengths is None else torch.tensor(lengths)
    mask = (torch.arange(T) < lengths[:, None]).to(F64)  # [B, T]
    randn = lambda: torch.randn(B, T, generator=gen, dtype=F64)
    behav = (-torch.rand(B, T, generator=gen, dtype=F64) * 3) * mask
    b = make_batch(mask, behav_logp=behav, prox_logp=behav.clone(), ref_logp=(behav + 0.2 * randn()) * mask,
                   adv=torch.randn(B, 1, generator=gen, dtype=F64) * mask,
                   version_gap=torch.randint(1, 5, (B,), generator=gen))
    return b, (behav + noise * randn()) * mask


def cfg_for(name, **kw):
    return resolve(replace(Config(), loss=name, **kw))


def loss_and_grad(fn, logp, b, cfg):
    logp = logp.detach().clone().requires_grad_()
    loss, _ = fn(logp, b, cfg)
    loss.backward()
    return loss.detach(), logp.grad


def reinforce(mode, T_max=None):
    """Plain policy gradient -A·logp, aggregated by `mode`: the reference the identities compare with."""
    return lambda logp, b, cfg: (aggregate(-b.adv * logp, b.mask, mode, T_max), {})


# -------------------------------------------------------------------------------------------------
# (a) identities

ON_POLICY_CASES = [  # (loss, its aggregation); A is constant along each sequence, as group advantages are
    ("pg", "token-mean"), ("ppo", "token-mean"), ("dapo", "token-mean"), ("cispo", "token-mean"),
    ("grpo", "seq-mean-token-mean"), ("gspo", "seq-mean-token-mean"), ("gspo_token", "seq-mean-token-mean"),
    ("gmpo", "seq-mean-token-mean"), ("sapo", "seq-mean-token-mean"), ("dr_grpo", "seq-mean-token-sum-norm"),
    ("luspo", "seq-mean-token-sum"),
]


@pytest.mark.parametrize("name, mode", ON_POLICY_CASES, ids=[c[0] for c in ON_POLICY_CASES])
def test_on_policy_gradient_equals_reinforce_with_the_same_aggregation(name, mode):
    # prox = sg(logp): r ≡ 1, nothing is clipped (ppo), s ≡ 1 (gspo), f'(1) = 1 (sapo), sg(clip(1)) = 1 (cispo)
    b, logp = random_batch(seed=1)
    cfg = cfg_for(name)
    b = replace(b, prox_logp=logp)
    _, grad = loss_and_grad(LOSSES[name].fn, logp, b, cfg)
    _, expected = loss_and_grad(reinforce(mode, cfg.T_max), logp, b, cfg)
    torch.testing.assert_close(grad, expected)


def test_on_policy_gspo_gradient_equals_grpo_gradient():
    b, logp = random_batch(seed=2)
    b = replace(b, prox_logp=logp)
    _, g_gspo = loss_and_grad(LOSSES["gspo"].fn, logp, b, cfg_for("gspo"))
    _, g_grpo = loss_and_grad(LOSSES["grpo"].fn, logp, b, cfg_for("grpo"))
    torch.testing.assert_close(g_gspo, g_grpo)


@pytest.mark.parametrize("dual_clip_c", [0.0, 3.0])
def test_decoupled_ppo_with_prox_equal_to_behav_is_ppo(dual_clip_c):
    # w = π_prox/π_behav = 1, so -w·min(u·A, clip(u)·A) is PPO's token loss, token-mean in both
    b, logp = random_batch(seed=3, noise=0.5)
    cfg = cfg_for("decoupled_ppo", dual_clip_c=dual_clip_c, behav_weight_cap=5.0)  # the cap never binds at w = 1
    loss_d, grad_d = loss_and_grad(LOSSES["decoupled_ppo"].fn, logp, b, cfg)
    loss_p, grad_p = loss_and_grad(LOSSES["ppo"].fn, logp, b, replace(cfg, loss="ppo", behav_weight_cap=None))
    torch.testing.assert_close(loss_d, loss_p)
    torch.testing.assert_close(grad_d, grad_p)


def test_a3po_at_version_gap_1_is_decoupled_ppo():
    # d = 1: α = 1/d = 1, so π̂_prox = 1·behav + 0·sg(logp) = behav exactly
    b, logp = random_batch(seed=4, noise=0.5)
    b = replace(b, version_gap=torch.ones(b.B, dtype=torch.long), prox_logp=b.behav_logp + 0.7)  # a3po ignores prox_logp
    cfg = cfg_for("a3po")
    loss_a, grad_a = loss_and_grad(LOSSES["a3po"].fn, logp, b, cfg)
    loss_d, grad_d = loss_and_grad(LOSSES["decoupled_ppo"].fn, logp, replace(b, prox_logp=b.behav_logp), cfg)
    torch.testing.assert_close(loss_a, loss_d)
    torch.testing.assert_close(grad_a, grad_d)


def test_a3po_prox_weight_on_behav_is_one_over_version_gap():
    # log π̂_prox = α·behav_logp + (1-α)·sg(logp) with α = 1/d; with behav_logp = -1, logp = -2 it is α - 2.
    # d = 1, 2, 4, 8 -> α = 1, 0.5, 0.25, 0.125 (AReaL's α' = 1 - α = 0, 0.5, 0.75, 0.875).
    # d = 0 cannot occur in training (gap = step + 1 - version >= 1); the clamp treats it as d = 1.
    mask = torch.ones(5, 2, dtype=F64)
    b = make_batch(mask, behav_logp=-torch.ones_like(mask), prox_logp=torch.zeros_like(mask),
                   adv=torch.ones_like(mask), version_gap=torch.tensor([1, 2, 4, 8, 0]))
    _, info = LOSSES["a3po"].fn(torch.full_like(mask, -2.0, requires_grad=True), b, cfg_for("a3po"))
    torch.testing.assert_close(info.prox_logp[:, 0], torch.tensor([-1, -1.5, -1.75, -1.875, -1], dtype=F64))


def test_gspo_token_equals_gspo_when_advantage_is_constant_along_each_sequence():
    # s_{i,t} = sg(s_i)·π_θ/sg(π_θ) has value s_i and ∂s_{i,t}/∂logp_t = s_i; GSPO's ∂s_i/∂logp_t = s_i/|y_i|,
    # and the 1/|y_i| of seq-mean-token-mean makes them equal. eps = 0.1 clips some sequences, not all.
    b, logp = random_batch(P=4, seed=5, noise=0.4)
    cfg = cfg_for("gspo", eps_low=0.1, eps_high=0.1)
    loss_s, grad_s = loss_and_grad(LOSSES["gspo"].fn, logp, b, cfg)
    loss_t, grad_t = loss_and_grad(LOSSES["gspo_token"].fn, logp, b, cfg)
    torch.testing.assert_close(loss_t, loss_s)
    torch.testing.assert_close(grad_t, grad_s)
    _, info = LOSSES["gspo"].fn(logp, b, cfg)
    clipped_seq = (info.clip_low | info.clip_high)[:, 0]
    assert clipped_seq.any() and not clipped_seq.all()


def test_luspo_golden_values_each_sequence_loss_times_its_length():
    # prox = 0, A = +1 for both. Sequence 0 (|y| = 3): log r = 0.3, 0, -0.3, mean 0, so s_0 = 1 (in band).
    # Sequence 1 (|y| = 1): log r = 0.01, s_1 = e^0.01 = 1.01005, above both upper clips with A > 0: clipped,
    # at 1 + 4e-4 (GSPO) and at 1 + 2.5e-3 (LUSPO's default).
    # GSPO  = (1/2)·(-1 - 1.0004) = -1.0002;  LUSPO = (1/2)·(3·(-1) + 1·(-1.0025)) = -2.00125.
    # d LUSPO / d logp_{0,t} = -(1/2)·3·s_0·(1/3)·A = -0.5 on each token of sequence 0; 0 on the clipped one.
    mask = torch.tensor([[1.0, 1, 1], [1, 0, 0]], dtype=F64)
    b = make_batch(mask, prox_logp=torch.zeros(2, 3, dtype=F64), adv=mask.clone())
    logp = torch.tensor([[0.3, 0.0, -0.3], [0.01, 0, 0]], dtype=F64)
    cfg = cfg_for("luspo")
    loss, grad = loss_and_grad(LOSSES["luspo"].fn, logp, b, cfg)
    gspo_loss, _ = loss_and_grad(LOSSES["gspo"].fn, logp, b, cfg_for("gspo"))
    torch.testing.assert_close(loss, torch.tensor(-2.00125, dtype=F64))
    torch.testing.assert_close(gspo_loss, torch.tensor(-1.0002, dtype=F64))
    torch.testing.assert_close(grad, torch.tensor([[-0.5, -0.5, -0.5], [0, 0, 0]], dtype=F64))


def test_clip_fraction_two_definitions():
    # anchor §B2, eps = 0.2, (r, A) = (1.5, +1), (0.5, -1), (0.5, +1), (1.5, -1):
    # out of band |r - 1| > 0.2: 4/4 = 1.0; clipped branch active (zero gradient): tokens 0 and 1, 2/4 = 0.5
    mask = torch.ones(1, 4, dtype=F64)
    b = make_batch(mask, prox_logp=torch.zeros_like(mask), adv=torch.tensor([[1.0, -1.0, 1.0, -1.0]], dtype=F64))
    logp = torch.tensor([[1.5, 0.5, 0.5, 1.5]], dtype=F64).log()
    _, info = LOSSES["ppo"].fn(logp, b, cfg_for("ppo"))
    assert info.out_of_band.double().mean() == 1.0
    assert (info.clip_low | info.clip_high).double().mean() == 0.5


# -------------------------------------------------------------------------------------------------
# (b) invariances


def _scramble_padding(x, mask, gen):
    return torch.where(mask.bool(), x, 3 * torch.randn(x.shape, generator=gen, dtype=x.dtype))


@pytest.mark.parametrize("name", list(LOSSES))
def test_values_under_the_mask_change_neither_loss_nor_gradient(name):
    b, logp = random_batch(seed=6)
    assert (b.mask == 0).any()
    cfg = cfg_for(name, beta=0.04)  # with the KL term in the loss
    gen = torch.Generator().manual_seed(7)
    noisy = replace(b, **{f: _scramble_padding(getattr(b, f), b.mask, gen)
                          for f in ("behav_logp", "prox_logp", "ref_logp", "adv")})
    loss, grad = loss_and_grad(LOSSES[name].fn, logp, b, cfg)
    loss_n, grad_n = loss_and_grad(LOSSES[name].fn, _scramble_padding(logp, b.mask, gen), noisy, cfg)
    torch.testing.assert_close(loss_n, loss)
    torch.testing.assert_close(grad_n, grad)
    assert (grad[b.mask == 0] == 0).all()


def _seq_sum_pg(logp, b, cfg):
    """PPO's clipped surrogate with seq-mean-token-sum (no registered loss uses this mode)."""
    loss_bt, _, _, _ = clip_surrogate(token_ratio(logp, b.prox_logp), b.adv, cfg.eps_low, cfg.eps_high)
    return aggregate(loss_bt, b.mask, "seq-mean-token-sum"), {}


SEQ_SEPARABLE = {  # loss -> aggregation; every one is a mean over sequences of a per-sequence term
    "grpo": LOSSES["grpo"].fn,  # seq-mean-token-mean
    "seq-mean-token-sum": _seq_sum_pg,
    "dr_grpo": LOSSES["dr_grpo"].fn,  # seq-mean-token-sum-norm
    "gspo": LOSSES["gspo"].fn,
    "sapo": LOSSES["sapo"].fn,
}


@pytest.mark.parametrize("name", SEQ_SEPARABLE)
def test_minibatches_weighted_by_sequence_share_reproduce_full_batch_gradient(name):
    # L = (1/B) Σ_i ℓ_i (ℓ_i alone for token-mean-in-sequence, token-sum, or token-sum/T_max), so
    # L = Σ_k (B_k/B)·L_k over minibatches of whole groups, off-policy and with the clip active
    fn, cfg = SEQ_SEPARABLE[name], cfg_for("grpo", eps_low=0.2, eps_high=0.2)
    b, logp0 = random_batch(P=4, G=2, seed=8, noise=0.4)
    _, full = loss_and_grad(fn, logp0, b, cfg)
    logp = logp0.clone().requires_grad_()
    for idx in group_rows(4, 2, 2, torch.Generator().manual_seed(0)):
        loss, _ = fn(logp[idx], b.rows(idx), cfg)
        (loss * len(idx) / b.B).backward()
    torch.testing.assert_close(logp.grad, full)


def test_token_mean_minibatches_weighted_by_sequence_share_do_not_reproduce_full_batch():
    # Documented pitfall. Groups of G = 2: group 0 has lengths (3, 3) -> 6 tokens, group 1 lengths (1, 1)
    # -> 2 tokens; N = 8. On-policy, ∂L/∂logp = -A/N = -A/8 per token on the full batch. One minibatch per
    # group, weight 1/2 each (same number of sequences): group 0 tokens get ½·(-A/6) = -A/12 = (2/3)·(-A/8),
    # group 1 tokens get ½·(-A/2) = -A/4 = 2·(-A/8): short sequences are over-weighted 3x relative to long.
    b, logp0 = random_batch(P=2, G=2, T=3, lengths=[3, 3, 1, 1], seed=9)
    b = replace(b, prox_logp=logp0)
    cfg = cfg_for("ppo")
    _, full = loss_and_grad(LOSSES["ppo"].fn, logp0, b, cfg)
    logp = logp0.clone().requires_grad_()
    for idx in (torch.tensor([0, 1]), torch.tensor([2, 3])):
        loss, _ = LOSSES["ppo"].fn(logp[idx], b.rows(idx), cfg)
        (loss * 0.5).backward()
    factor = torch.tensor([[2 / 3], [2 / 3], [2.0], [2.0]], dtype=F64)
    torch.testing.assert_close(logp.grad, factor * full)


def test_token_mean_minibatches_weighted_by_token_share_reproduce_full_batch():
    # L = Σ_t ℓ_t / N = Σ_k (N_k/N)·L_k: weight by tokens, not sequences (TRL's global token normaliser)
    b, logp0 = random_batch(P=4, G=2, seed=10, noise=0.4)
    cfg = cfg_for("ppo")
    _, full = loss_and_grad(LOSSES["ppo"].fn, logp0, b, cfg)
    logp = logp0.clone().requires_grad_()
    for idx in group_rows(4, 2, 2, torch.Generator().manual_seed(0)):
        mb = b.rows(idx)
        loss, _ = LOSSES["ppo"].fn(logp[idx], mb, cfg)
        (loss * mb.mask.sum() / b.mask.sum()).backward()
    torch.testing.assert_close(logp.grad, full)


# -------------------------------------------------------------------------------------------------
# (c) the loss contract


@pytest.mark.parametrize("name", list(LOSSES))
def test_every_loss_returns_a_finite_scalar_and_detached_bt_info(name):
    b, logp = random_batch(seed=11)
    logp.requires_grad_()
    loss, info = LOSSES[name].fn(logp, b, cfg_for(name, beta=0.04))
    assert loss.dim() == 0 and torch.isfinite(loss) and loss.requires_grad
    assert isinstance(info, LossInfo)
    for f in fields(info):
        value = getattr(info, f.name)
        if value is not None:
            assert not value.requires_grad, f.name
            assert value.shape == b.mask.shape, (f.name, value.shape)


def test_loss_info_refuses_a_tensor_with_a_gradient_and_half_a_clip():
    r = torch.ones(2, 3, requires_grad=True)
    with pytest.raises(ValueError, match=r"LossInfo.ratio carries a gradient; detach it"):
        LossInfo(ratio=r)
    with pytest.raises(ValueError, match="^LossInfo.clip_low and clip_high are reported together$"):
        LossInfo(ratio=r.detach(), clip_low=torch.zeros(2, 3, dtype=torch.bool))
    with pytest.raises(TypeError, match="unexpected keyword argument 'new_metric'"):
        LossInfo(ratio=r.detach(), new_metric=r.detach())  # a loss cannot report what nothing logs


def test_the_loop_rejects_a_loss_that_breaks_the_contract(monkeypatch):
    from xxpo_lab.loop import loss_of

    b, logp = random_batch(seed=12)
    monkeypatch.setitem(LOSSES, "grpo", replace(LOSSES["grpo"], fn=lambda logp, b, cfg: (logp.sum(), {"ratio": logp})))
    with pytest.raises(TypeError, match=r"loss 'grpo' returned \(Tensor of shape \(\), dict\)"):
        loss_of("grpo", logp, b, cfg_for("grpo"))


def test_get_loss_unknown_name_raises_key_error_listing_valid_names():
    with pytest.raises(KeyError) as err:
        get_loss("ppo2")
    assert err.value.args[0] == "unknown loss 'ppo2'; the losses are: " + ", ".join(LOSSES)
    assert get_loss("grpo") is LOSSES["grpo"]


# -------------------------------------------------------------------------------------------------
# (d) expected gradients of the KL estimators, by enumeration over a categorical policy π = softmax(θ)


def _kl_gradients(estimator):
    theta = torch.tensor([[0.3, -1.0, 0.5, 0.0, 1.2]], dtype=F64, requires_grad=True)
    ref_logp = torch.log_softmax(torch.tensor([[0.0, 0.4, -0.7, 1.0, 0.2]], dtype=F64), -1)
    logp = torch.log_softmax(theta, -1)
    pi = logp.exp()
    # E_{y~π}[∇k(y)]: the samples are fixed, so the probabilities weighting them carry no gradient
    expected = torch.autograd.grad((pi.detach() * KL_ESTIMATORS[estimator](logp, ref_logp)).sum(), theta,
                                   retain_graph=True)[0]
    reverse = torch.autograd.grad((pi * (logp - ref_logp)).sum(), theta, retain_graph=True)[0]  # ∇KL(π‖ref)
    forward = torch.autograd.grad((ref_logp.exp() * (ref_logp - logp)).sum(), theta)[0]  # ∇KL(ref‖π)
    return expected, reverse, forward


def test_k1_in_the_loss_has_zero_expected_gradient():
    expected, _, _ = _kl_gradients("k1")  # E[∇log π] = Σ_y ∇π(y) = ∇1 = 0
    torch.testing.assert_close(expected, torch.zeros_like(expected))


def test_k2_in_the_loss_descends_the_reverse_kl():
    expected, reverse, forward = _kl_gradients("k2")  # E[(log π - log ref)·∇log π] = ∇KL(π‖ref)
    torch.testing.assert_close(expected, reverse)
    assert not torch.allclose(reverse, forward)


def test_k3_in_the_loss_descends_the_forward_kl():
    expected, _, forward = _kl_gradients("k3")  # E_π[(1 - ref/π)·∇log π] = -E_ref[∇log π] = ∇KL(ref‖π)
    torch.testing.assert_close(expected, forward)


# -------------------------------------------------------------------------------------------------
# (e) what each loss reports, and what its switches do (each test here was written for mutants that
# survived `make mutate`: tests/README.md)

INFO_FIELDS = {  # the LossInfo fields each loss fills, whatever the batch
    **dict.fromkeys(["pg", "gspo", "gspo_token", "luspo", "gmpo"], {"ratio", "clip_low", "clip_high", "out_of_band"}),
    **dict.fromkeys(["ppo", "grpo", "bnpo", "dr_grpo", "dapo", "sppo"],
                    {"ratio", "clip_low", "clip_high", "out_of_band", "dual_clip"}),
    "decoupled_ppo": {"ratio", "clip_low", "clip_high", "out_of_band", "dual_clip", "is_weight", "is_masked"},
    "a3po": {"ratio", "clip_low", "clip_high", "out_of_band", "dual_clip", "is_weight", "is_masked", "prox_logp"},
    "sapo": {"ratio", "gate"}, "cispo": {"ratio", "is_capped"}, "self_play_po": {"ratio"},
    **dict.fromkeys(["dppo_tv", "dppo_kl"], {"ratio", "clip_low", "clip_high", "out_of_band", "is_capped"}),
    "vespo": {"ratio", "phi"}, "m2po": {"ratio", "is_masked"},
}


def test_every_loss_is_listed_with_the_fields_it_reports():
    assert set(INFO_FIELDS) == set(LOSSES)


@pytest.mark.parametrize("name", list(LOSSES))
def test_every_loss_fills_the_info_fields_its_metrics_come_from(name):
    b, logp = random_batch(seed=13)
    _, info = LOSSES[name].fn(logp, b, cfg_for(name))
    assert {f.name for f in fields(info) if getattr(info, f.name) is not None} == INFO_FIELDS[name]


def grid_batch(log_ratios, advs):
    """One token per row (T = 1, so a sequence ratio is the token ratio), one row per (log r, A) pair;
    prox = behav = 0, so r = exp(log r) exactly at the band edges the grid holds."""
    pairs = [(x, a) for x in log_ratios for a in advs]
    col = lambda values: torch.tensor(values, dtype=F64)[:, None]
    mask = torch.ones(len(pairs), 1, dtype=F64)
    b = make_batch(mask, behav_logp=torch.zeros_like(mask), prox_logp=torch.zeros_like(mask),
                   ref_logp=torch.zeros_like(mask), adv=col([a for _, a in pairs]),
                   version_gap=torch.ones(len(pairs), dtype=torch.long))
    return b, col([x for x, _ in pairs])


ADVS = [-1.0, -0.5, 0.0, 0.5, 1.0]
CLIPPING = [name for name, fields_ in INFO_FIELDS.items() if "clip_low" in fields_
            and not name.startswith("dppo")]  # DPPO's region is on p - p_prox, not r: test_mismatch checks its flags


@pytest.mark.parametrize("name", CLIPPING)
def test_clip_flags_follow_their_definition_at_the_band_edges(name):
    # eps_low 0.5, eps_high 0.75: the band is r in [0.5, 1.75] (GMPO: log r in [-0.5, 0.75]), and the grid
    # puts tokens exactly on both edges, where nothing is clipped (strict inequalities, as TRL's metrics),
    # with advantages of both signs, zero, and below 1 in size.
    if name == "gmpo":
        log_r = torch.tensor([-1.0, -0.5, 0.0, 0.6, 0.75, 1.0])
        lo, hi, x = -0.5, 0.75, lambda info, log_r: log_r
    else:
        log_r = torch.log(torch.tensor([0.25, 0.5, 1.0, 1.6, 1.75, 2.0], dtype=F64))
        lo, hi, x = 0.5, 1.75, lambda info, log_r: info.ratio
    b, logp = grid_batch(log_r.tolist(), ADVS)
    _, info = LOSSES[name].fn(logp, b, cfg_for(name, eps_low=0.5, eps_high=0.75))
    value = x(info, logp)
    assert (value == lo).any() and (value == hi).any(), "the grid must hold both edges exactly"
    torch.testing.assert_close(info.ratio, logp.exp())
    assert torch.equal(info.clip_low, (b.adv < 0) & (value < lo))
    assert torch.equal(info.clip_high, (b.adv > 0) & (value > hi))
    assert torch.equal(info.out_of_band, (value < lo) | (value > hi))


def test_cispo_marks_the_weights_its_bounds_capped():
    b, logp = grid_batch(torch.log(torch.tensor([0.25, 0.5, 1.0, 1.75, 2.0], dtype=F64)).tolist(), ADVS)
    _, info = LOSSES["cispo"].fn(logp, b, cfg_for("cispo", eps_low=0.5, eps_high=0.75))
    assert torch.equal(info.is_capped, (info.ratio < 0.5) | (info.ratio > 1.75))


@pytest.mark.parametrize("name", list(LOSSES))
def test_the_kl_term_adds_beta_times_a_positive_penalty(name):
    # k3 = r - 1 - log r >= 0 with r = ref/π, > 0 where π != ref: a larger beta must give a larger loss, by a
    # penalty linear in beta (the term is added, never subtracted)
    b, logp = random_batch(seed=14)
    loss = {beta: LOSSES[name].fn(logp, b, cfg_for(name, beta=beta, kl_in="loss"))[0] for beta in (0.0, 0.1, 0.2)}
    penalty = loss[0.1] - loss[0.0]
    assert penalty > 0
    torch.testing.assert_close(loss[0.2] - loss[0.0], 2 * penalty)
    in_reward, _ = LOSSES[name].fn(logp, b, cfg_for(name, beta=0.1, kl_in="reward"))
    torch.testing.assert_close(in_reward, loss[0.0])  # with the KL in the reward, the loss adds nothing


DUAL_CLIPPED = [name for name, spec in LOSSES.items() if "dual_clip_c" in spec.switches]


@pytest.mark.parametrize("name", DUAL_CLIPPED)
def test_every_loss_that_takes_dual_clip_caps_a_negative_advantage_token_at_c(name):
    # A = -1 with r = 8 > c = 2: the PPO term r·|A| = 8 is capped at c·|A| = 2 (ALGORITHMS.md §1); at r = c
    # exactly the cap changes nothing and is not counted; A = +0.5 is clipped as usual, untouched by dual clip.
    # One token per row.
    b, logp = grid_batch([math.log(8.0), math.log(2.0), 0.0], [-1.0, 0.5])
    cfg = cfg_for(name)
    off, info_off = LOSSES[name].fn(logp, b, cfg)
    on, info_on = LOSSES[name].fn(logp, b, replace(cfg, dual_clip_c=2.0))
    assert info_on.dual_clip[:, 0].tolist() == [True, False, False, False, False, False]
    assert not info_off.dual_clip.any()
    norm = b.B * (cfg.T_max if name == "dr_grpo" else 1)  # Dr. GRPO divides by B·T_max
    torch.testing.assert_close(off - on, torch.tensor((8.0 - 2.0) / norm, dtype=F64))


@pytest.mark.parametrize("name", ["decoupled_ppo", "a3po"])
def test_behav_weight_cap_drops_the_tokens_above_it_and_keeps_the_rest(name):
    # w = π_prox/π_behav = 1, 2 (on the cap: kept) and e (above it: dropped, AReaL's mask). With A = 1 and
    # r = 1, each kept token's loss is -w·A: token-mean over the kept tokens = -(1 + 2)/2.
    # A-3PO builds its prox: at d = 2, log π̂_prox = (behav_logp + logp)/2, so behav 0 and logp = 2·log w;
    # there r = π_θ/π̂_prox = w too, clipped at 1 + eps_high = 1.2: -(1·1 + 2·1.2)/2 = -1.7.
    log_w = torch.tensor([[0.0], [math.log(2.0)], [1.0]], dtype=F64)
    mask = torch.ones(3, 1, dtype=F64)
    if name == "decoupled_ppo":
        behav, logp, gap = -log_w, torch.zeros_like(mask), 1
    else:
        behav, logp, gap = torch.zeros_like(mask), 2 * log_w, 2
    b = make_batch(mask, behav_logp=behav, prox_logp=torch.zeros_like(mask), ref_logp=torch.zeros_like(mask),
                   adv=torch.ones_like(mask), version_gap=torch.full((3,), gap))
    loss, info = LOSSES[name].fn(logp, b, cfg_for(name, behav_weight_cap=2.0))
    assert torch.isfinite(loss)
    assert info.is_masked[:, 0].tolist() == [False, False, True]
    torch.testing.assert_close(info.is_weight[:, 0], torch.tensor([1.0, 2.0, math.e], dtype=F64))
    torch.testing.assert_close(loss, torch.tensor(-1.5 if name == "decoupled_ppo" else -1.7, dtype=F64))
    uncapped, info = LOSSES[name].fn(logp, b, cfg_for(name))
    assert not info.is_masked.any() and uncapped != loss


def test_self_play_po_regresses_the_sequence_log_ratio_onto_eta_times_the_mean_advantage():
    # rows of length 1, 2, 3: Σ_t log r = 0.2, 0.3 - 0.1 = 0.2, 0.4·3 = 1.2; mean advantages 0.5, -0.25, 0.1;
    # with eta = 2, ℓ_i = (Σ log r - 2·Ā_i)² = (0.2 - 1)², (0.2 + 0.5)², (1.2 - 0.2)² = 0.64, 0.49, 1.0, and
    # seq-mean-token-mean of a constant row is its value: (0.64 + 0.49 + 1.0) / 3 = 0.71
    mask = torch.tensor([[1, 0, 0], [1, 1, 0], [1, 1, 1]], dtype=F64)
    log_r = torch.tensor([[0.2, 9, 9], [0.3, -0.1, 9], [0.4, 0.4, 0.4]], dtype=F64) * mask
    adv = torch.tensor([[0.5, 0, 0], [-0.25, -0.25, 0], [0.1, 0.1, 0.1]], dtype=F64)
    b = make_batch(mask, prox_logp=torch.zeros_like(mask), ref_logp=torch.zeros_like(mask), adv=adv,
                   version_gap=torch.ones(3, dtype=torch.long))
    loss, info = LOSSES["self_play_po"].fn(log_r, b, cfg_for("self_play_po", sp_eta=2.0))
    torch.testing.assert_close(loss, torch.tensor(2.13 / 3, dtype=F64))
    torch.testing.assert_close(info.ratio[:, 0], torch.tensor([0.2, 0.2, 1.2], dtype=F64).exp())


def test_gmpo_clips_each_log_ratio_by_the_sign_of_its_advantage_before_the_geometric_mean():
    # eps 0.4: row 1, A = +0.5: log r = (1.0, 0.2) -> (0.4, 0.2), mean 0.3, ℓ = -e^0.3·0.5;
    # row 2, A = -1: log r = (-1.0, 0.6) -> (-0.4, 0.6), mean 0.1, ℓ = +e^0.1;
    # row 3, A = +1: log r = (0.2, 0.2), nothing clipped, ℓ = -e^0.2; seq-mean of the rows.
    mask = torch.ones(3, 2, dtype=F64)
    log_r = torch.tensor([[1.0, 0.2], [-1.0, 0.6], [0.2, 0.2]], dtype=F64)
    adv = torch.tensor([[0.5, 0.5], [-1.0, -1.0], [1.0, 1.0]], dtype=F64)
    b = make_batch(mask, prox_logp=torch.zeros_like(mask), ref_logp=torch.zeros_like(mask), adv=adv,
                   version_gap=torch.ones(3, dtype=torch.long))
    loss, _ = LOSSES["gmpo"].fn(log_r, b, cfg_for("gmpo"))
    expected = (-math.exp(0.3) * 0.5 + math.exp(0.1) - math.exp(0.2)) / 3
    torch.testing.assert_close(loss, torch.tensor(expected, dtype=F64))


def test_sapo_gates_a_zero_advantage_token_with_tau_neg():
    # TRL and verl: tau = where(A > 0, tau_pos, tau_neg); the gate of an A = 0 token (its loss is 0 either way)
    # is the A < 0 gate, and the gate/mean metric averages it
    b, logp = grid_batch([math.log(0.5), math.log(1.5)], [-1.0, 0.0, 1.0])
    _, info = LOSSES["sapo"].fn(logp, b, cfg_for("sapo", tau_pos=1.0, tau_neg=3.0))
    gate = info.gate[:, 0].view(2, 3)  # rows: r = 0.5, 1.5; columns: A = -1, 0, 1
    torch.testing.assert_close(gate[:, 1], gate[:, 0])
    assert (gate[:, 1] != gate[:, 2]).all()


def test_every_loss_aggregation_is_read_off_its_gradient():
    """integrations.aggregation tells engines how each loss averages; it must name every loss's real mode."""
    from xxpo_lab.integrations.aggregation import aggregation_of

    expected = {name: "token-mean" for name in LOSSES}
    expected |= dict.fromkeys(["grpo", "gspo", "gspo_token", "gmpo", "sapo", "self_play_po"], "seq-mean-token-mean")
    expected |= {"dr_grpo": "seq-mean-token-sum-norm", "luspo": "seq-mean-token-sum"}
    assert {name: aggregation_of(name) for name in LOSSES} == expected


def test_self_play_po_averages_over_responses():
    """Its aggregation is declared (the gradient cannot show it): the loss is the mean over responses of
    (Σ_t log r - η·target)², whatever their lengths."""
    mask = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 1.0]], dtype=F64)
    prox = torch.zeros_like(mask)
    logp = torch.tensor([[-0.2, 0.0, 0.0], [0.1, 0.3, -0.1]], dtype=F64)
    adv = torch.tensor([[0.5, 0.0, 0.0], [-0.25, -0.25, -0.25]], dtype=F64)
    b = make_batch(mask, behav_logp=prox, prox_logp=prox, adv=adv)
    loss, _ = LOSSES["self_play_po"].fn(logp, b, cfg_for("self_play_po"))
    # sequence 1: (-0.2 - 0.5)^2 = 0.49; sequence 2: (0.3 + 0.25)^2 = 0.3025; mean 0.39625
    assert float(loss) == pytest.approx(0.39625)
