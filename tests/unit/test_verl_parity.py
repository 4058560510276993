"""Our advantage estimators and PPO's clipped value loss against verl's own code (tests/unit/verl_reference.py).

Random batches with ragged lengths, groups whose rewards are all equal, and per-token KL penalties in the
reward. verl's masked statistics divide by (count + 1e-8), so agreement is to ~1e-7, not to the last bit.
"""

import pytest
import torch
import verl_reference as verl  # tests/unit is on sys.path (pytest's prepend import mode)

from xxpo_lab.advantages import ADVANTAGES, shaped_rewards
from xxpo_lab.batch import Batch
from xxpo_lab.config import Config
from xxpo_lab.critic import value_loss

F64 = torch.float64
P, G, T = 6, 4, 7
TOL = {"rtol": 1e-6, "atol": 1e-6}


def random_batch(seed: int, binary: bool = True) -> Batch:
    """P·G rows: ragged lengths 1..T, the first group all right and the second all wrong (A = 0 there)."""
    gen = torch.Generator().manual_seed(seed)
    B = P * G
    lengths = torch.randint(1, T + 1, (B,), generator=gen)
    mask = (torch.arange(T) < lengths[:, None]).to(F64)
    reward = torch.randint(0, 2, (B,), generator=gen).to(F64) if binary else torch.randn(B, generator=gen, dtype=F64)
    reward[:G], reward[G:2 * G] = 1.0, 0.0
    return Batch.of(mask, prompt_ids=torch.zeros(B, 1, dtype=torch.long), prompt_mask=torch.ones(B, 1, dtype=torch.long),
                    resp_ids=torch.zeros(B, T, dtype=torch.long),
                    behav_logp=-torch.rand(B, T, generator=gen, dtype=F64) * mask,
                    ref_logp=-torch.rand(B, T, generator=gen, dtype=F64) * mask,
                    values=torch.randn(B, T, generator=gen, dtype=F64), lengths=lengths,
                    truncated=torch.zeros(B, dtype=torch.bool), version=torch.zeros(B, dtype=torch.long),
                    reward=reward)


def verl_inputs(b: Batch, cfg: Config):
    """verl's inputs: token-level rewards (the outcome on the last token, KL penalties when in the reward),
    the response mask and the group index of each row (groups are contiguous rows here)."""
    _, token_reward = shaped_rewards(b, cfg)
    return token_reward, b.mask, [i // cfg.G for i in range(b.B)]


SEEDS = [0, 1, 2]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("binary", [True, False], ids=["binary", "gaussian"])
def test_group_zscore_is_verls_grpo(seed, binary):
    b, cfg = random_batch(seed, binary), Config(G=G, adv_eps=1e-6)  # verl's epsilon
    ours, _ = ADVANTAGES["grpo"](b, cfg)
    theirs, _ = verl.compute_grpo_outcome_advantage(*verl_inputs(b, cfg), epsilon=1e-6)
    torch.testing.assert_close(ours, theirs, **TOL)
    assert ours[: 2 * G].abs().max() == 0 and ours.abs().max() > 0.5  # equal groups give 0, the others do not


GROUP_BASELINES = [  # (our advantage, verl's function, its keyword arguments)
    ("dr_grpo", "compute_grpo_outcome_advantage", {"norm_adv_by_std_in_grpo": False}),  # GRPO without the std
    ("rloo", "compute_rloo_outcome_advantage", {}),
    ("reinforce_pp_baseline", "compute_reinforce_plus_plus_baseline_outcome_advantage", {}),
]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("adv, verl_fn, kwargs", GROUP_BASELINES, ids=[a for a, _, _ in GROUP_BASELINES])
def test_group_baselines_are_verls(seed, adv, verl_fn, kwargs):
    b, cfg = random_batch(seed, binary=False), Config(G=G, adv=adv)
    ours, _ = ADVANTAGES[adv](b, cfg)
    theirs, _ = getattr(verl, verl_fn)(*verl_inputs(b, cfg), **kwargs)
    torch.testing.assert_close(ours, theirs, **TOL)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("gamma, beta", [(1.0, 0.0), (0.9, 0.0), (1.0, 0.05), (0.8, 0.05)])
def test_reinforce_pp_is_verls_with_gamma_and_kl_in_the_reward(seed, gamma, beta):
    b = random_batch(seed)
    cfg = Config(G=G, adv="reinforce_pp", gamma=gamma, beta=beta, kl_in="reward", kl_estimator="k1")
    ours, _ = ADVANTAGES["reinforce_pp"](b, cfg)
    token_reward, mask, _ = verl_inputs(b, cfg)
    theirs, _ = verl.compute_reinforce_plus_plus_outcome_advantage(token_reward, mask, config=cfg)
    torch.testing.assert_close(ours, theirs, **TOL)
    if beta > 0 or gamma < 1:  # not constant along a response: the per-token path is exercised
        assert (ours[:, 0] != ours[:, 1])[b.lengths > 1].any()


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("gamma, lam", [(1.0, 0.95), (1.0, 1.0), (0.9, 0.5), (1.0, 0.0)])
def test_gae_is_verls_gae(seed, gamma, lam):
    b = random_batch(seed)
    cfg = Config(G=G, loss="ppo", gamma=gamma, lam=lam, beta=0.05, kl_in="reward", kl_estimator="k1")
    ours, our_returns = ADVANTAGES["gae"](b, cfg)
    token_reward, mask, _ = verl_inputs(b, cfg)
    theirs, returns = verl.compute_gae_advantage_return(token_reward, b.values, mask, gamma, lam)
    torch.testing.assert_close(ours, theirs * mask, **TOL)  # verl leaves padding unmasked; the loss masks it
    torch.testing.assert_close(our_returns, returns * mask, **TOL)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("eps_value", [0.2, 0.5])
def test_clipped_value_loss_is_verls(seed, eps_value):
    b = random_batch(seed)
    gen = torch.Generator().manual_seed(100 + seed)
    old_values = b.values
    values = old_values + torch.randn(old_values.shape, generator=gen, dtype=F64)  # moves past the clip range
    returns = torch.randn(old_values.shape, generator=gen, dtype=F64)
    ours, clipped = value_loss(values, old_values, returns, b.mask, eps_value)
    theirs, clipfrac = verl.compute_value_loss(values, returns, old_values, b.mask, eps_value)
    torch.testing.assert_close(ours, theirs, **TOL)
    torch.testing.assert_close((clipped * b.mask).sum() / b.mask.sum(), clipfrac, **TOL)
    assert 0.1 < clipfrac < 0.9  # both branches of the max are taken


def test_the_reference_is_verls_code_not_ours():
    """The copied functions must not import anything from xxpo_lab (they would then test us against us)."""
    code = open(verl.__file__).read().split('"""', 2)[2]  # after the module docstring
    assert "xxpo_lab" not in code
