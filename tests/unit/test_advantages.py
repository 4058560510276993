"""Golden values and loop-vs-vectorised checks for `xxpo_lab.advantages` (anchor §F, ALGORITHMS.md §2, 3, 10.3, 10.4)."""

import math
import statistics
from dataclasses import replace

import pytest
import torch

from xxpo_lab.advantages import (
    ADVANTAGES,
    gae,
    get_advantage,
    group_center,
    group_zscore,
    prompt_critic,
    reinforce_pp,
    rloo,
    win_rate,
)
from xxpo_lab.batch import Batch
from xxpo_lab.config import Config

F64 = torch.float64


def make_batch(reward, lengths, T, **fields):
    """A Batch with outcome rewards [B] and response lengths [B]; fields no estimator reads are dummies."""
    lengths = torch.as_tensor(lengths)
    B = len(lengths)
    mask = (torch.arange(T) < lengths[:, None]).to(F64)  # [B, T]
    return Batch(prompt_ids=torch.zeros(B, 1, dtype=torch.long), prompt_mask=torch.ones(B, 1, dtype=torch.long),
                 resp_ids=torch.zeros(B, T, dtype=torch.long), mask=mask, behav_logp=torch.zeros(B, T, dtype=F64),
                 lengths=lengths, truncated=torch.zeros(B, dtype=torch.bool), version=torch.zeros(B, dtype=torch.long),
                 reward=torch.as_tensor(reward, dtype=F64), **fields)


def check(actual, expected, atol=1e-6):
    torch.testing.assert_close(actual, torch.as_tensor(expected, dtype=actual.dtype), atol=atol, rtol=0)


CFG = Config(G=4)
ONE_GROUP = make_batch([1.0, 0.0, 0.0, 0.0], lengths=[2, 3, 1, 2], T=3)


def per_seq(adv, b):
    """The advantage of each sequence: it is constant along the valid tokens, and every row has one."""
    assert (adv == adv[:, :1] * b.mask).all()
    return adv[:, 0]


# -------------------------------------------------------------------------------------------------
# group baselines on rewards (1, 0, 0, 0), G = 4: mean 0.25, deviations (0.75, -0.25, -0.25, -0.25)


def test_grpo_zscore_golden_values():
    # unbiased variance (0.75² + 3·0.25²)/(4 - 1) = 0.75/3 = 0.25, std 0.5 -> (1.5, -0.5, -0.5, -0.5);
    # with adv_eps = 1e-4 in the denominator: 0.75/0.5001 = 1.49970, -0.25/0.5001 = -0.49990
    adv, _ = group_zscore(ONE_GROUP, CFG)
    check(per_seq(adv, ONE_GROUP), [0.75 / 0.5001, -0.25 / 0.5001, -0.25 / 0.5001, -0.25 / 0.5001])
    adv, _ = group_zscore(ONE_GROUP, replace(CFG, adv_eps=1e-12))
    check(per_seq(adv, ONE_GROUP), [1.5, -0.5, -0.5, -0.5])


def test_dr_grpo_mean_centred_golden_values():
    adv, _ = group_center(ONE_GROUP, CFG)  # R - 0.25
    check(per_seq(adv, ONE_GROUP), [0.75, -0.25, -0.25, -0.25])


def test_rloo_golden_values():
    # A_0 = 1 - mean(0, 0, 0) = 1; A_j = 0 - mean(1, 0, 0) = -1/3  (= 4/3 · the mean-centred values)
    adv, _ = rloo(ONE_GROUP, CFG)
    check(per_seq(adv, ONE_GROUP), [1.0, -1 / 3, -1 / 3, -1 / 3])


def test_win_rate_golden_values():
    # P̂_0 = mean over the 3 others of 1[1 > 0] = 1 -> 1 - ½ = 0.5
    # P̂_j = (0 + ½ + ½)/3 = 1/3 (a loss and two ties) -> 1/3 - ½ = -1/6
    adv, _ = win_rate(ONE_GROUP, CFG)
    check(per_seq(adv, ONE_GROUP), [0.5, -1 / 6, -1 / 6, -1 / 6])


@pytest.mark.parametrize("rewards", [[1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 0.0, 1.0], [0.0, 1.0, 1.0, 0.0]])
def test_win_rate_is_the_centred_reward_scaled_for_0_1_rewards(rewards):
    # k right of G: a right answer beats G - k and ties k - 1, P̂ - ½ = (G - k)/(2(G - 1)) = G/(2(G - 1))·(1 - k/G);
    # a wrong one ties G - k - 1, P̂ - ½ = -k/(2(G - 1)) = G/(2(G - 1))·(0 - k/G). Ch. 8 uses this identity.
    b = make_batch(rewards, lengths=[2, 1, 3, 2], T=3)
    adv, _ = win_rate(b, CFG)
    centred, _ = group_center(b, CFG)
    check(adv, 4 / (2 * 3) * centred)


@pytest.mark.parametrize("name", ["grpo", "dr_grpo", "rloo", "win_rate"])
def test_group_with_all_equal_rewards_gets_zero_advantage(name):
    b = make_batch([1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0], lengths=[2, 3, 1, 2, 3, 3, 1, 2], T=3)
    adv, _ = get_advantage(name)(b, CFG)
    assert (adv[:4] == 0).all()  # group 0: all right, no signal
    assert (adv[4:] != 0).any()  # group 1 still has one


def _random_rewards(seed, P=6):
    gen = torch.Generator().manual_seed(seed)
    binary = (torch.rand(P // 2, 4, generator=gen) < 0.5).to(F64)  # includes all-equal groups, most seeds
    continuous = torch.randn(P - P // 2, 4, generator=gen, dtype=F64)
    return torch.cat([binary, continuous]).reshape(-1)


def _loop_advantages(rewards, G, eps):
    """The three group baselines written as a plain loop over groups, one sequence at a time."""
    zscore, center, loo = [], [], []
    for start in range(0, len(rewards), G):
        group = rewards[start:start + G]
        mean, std = statistics.fmean(group), statistics.stdev(group)  # stdev: unbiased (n - 1)
        for i, r in enumerate(group):
            zscore.append((r - mean) / (std + eps))
            center.append(r - mean)
            loo.append(r - statistics.fmean(group[:i] + group[i + 1:]))
    return {group_zscore: zscore, group_center: center, rloo: loo}


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_vectorised_group_baselines_match_a_python_loop(seed):
    reward = _random_rewards(seed)
    b = make_batch(reward, lengths=torch.randint(1, 5, (len(reward),), generator=torch.Generator().manual_seed(seed)),
                   T=4)
    for fn, expected in _loop_advantages(reward.tolist(), CFG.G, CFG.adv_eps).items():
        adv, _ = fn(b, CFG)
        check(adv, torch.tensor(expected, dtype=F64)[:, None] * b.mask, atol=1e-6)


# -------------------------------------------------------------------------------------------------
# padding, REINFORCE++, the prompt critic, the registry


def _batch_for_every_estimator():
    b = make_batch([1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0], lengths=[3, 1, 2, 4, 2, 4, 1, 3], T=4)
    gen = torch.Generator().manual_seed(0)
    return replace(b, ref_logp=0.1 * torch.randn(b.mask.shape, generator=gen, dtype=F64),
                   values=torch.randn(b.mask.shape, generator=gen, dtype=F64))


@pytest.mark.parametrize("name", list(ADVANTAGES))
def test_advantages_are_zero_on_padding(name):
    b = _batch_for_every_estimator()
    if name == "sppo":
        b = replace(b, values=b.values[:, 0])  # a prompt critic: one value [B] per row
    adv, _ = ADVANTAGES[name](b, replace(CFG, beta=0.1, kl_in="reward"))  # KL shaping on: per-token rewards too
    assert adv.shape == b.mask.shape
    assert (adv[b.mask == 0] == 0).all()
    assert (adv[b.mask == 1] != 0).any()


def test_reinforce_pp_whitens_over_the_valid_tokens_of_the_batch():
    b = make_batch(torch.randn(8, generator=torch.Generator().manual_seed(1), dtype=F64),
                   lengths=[3, 1, 2, 4, 2, 4, 1, 3], T=4)
    adv, _ = reinforce_pp(b, CFG)
    valid = adv[b.mask == 1]
    check(valid.mean(), 0.0)
    check(valid.std(), 1.0)  # unbiased, as _masked_whiten divides by n - 1


def test_whitening_is_trl_and_verl_masked_whiten():
    # x = (1, 1.0002) on two valid tokens: mean 1.0001, unbiased var = 2·1e-8 = 2e-8
    # TRL/verl: (x - mean)·rsqrt(var + 1e-8) = ±1e-4 / sqrt(3e-8) = ±0.57735; /(std + 1e-4) would give ±0.58579
    from xxpo_lab.advantages import _masked_whiten

    x = torch.tensor([[1.0, 1.0002, 7.0]], dtype=F64)
    mask = torch.tensor([[1.0, 1.0, 0.0]], dtype=F64)
    check(_masked_whiten(x, mask), [[-1 / 3**0.5, 1 / 3**0.5, 0.0]], atol=1e-4)


def test_whitening_a_single_valid_token_gives_zero():
    # n = 1: the mean is the token itself (not half of it), the variance's n - 1 is clamped to 1
    from xxpo_lab.advantages import _masked_whiten

    x = torch.tensor([[3.0, 5.0]], dtype=F64)
    check(_masked_whiten(x, torch.tensor([[1.0, 0.0]], dtype=F64)), [[0.0, 0.0]])


def test_one_token_responses_have_returns_and_gae():
    # T = 1 (answers of one token): G_0 = r_0 and A_0 = r_0 - V_0
    from xxpo_lab.advantages import reward_to_go

    r, v, mask = (torch.tensor([[x], [y]], dtype=F64) for x, y in ((1.0, 2.0), (0.5, 0.25), (1.0, 1.0)))
    check(reward_to_go(r, mask, 0.9), [[1.0], [2.0]])
    adv, returns = gae(r, v, mask, 0.9, 0.95)
    check(adv, [[0.5], [1.75]])
    check(returns, [[1.0], [2.0]])


def test_a_kl_in_the_reward_with_beta_0_shapes_nothing():
    # beta = 0 builds no reference model, so the batch has no ref_logp: the rewards pass through untouched
    from xxpo_lab.advantages import shaped_rewards

    R, token_reward = shaped_rewards(ONE_GROUP, replace(CFG, kl_in="reward", beta=0.0))
    check(R, [1.0, 0.0, 0.0, 0.0])
    check(token_reward.sum(-1), [1.0, 0.0, 0.0, 0.0])


def test_reinforce_pp_reward_to_go_runs_backwards_with_gamma():
    # per-token rewards r = (1, 0, 2) on a 3-token response: with γ = 0.5 the returns are
    # G_2 = 2, G_1 = 0 + 0.5·2 = 1, G_0 = 1 + 0.5·1 = 1.5 (summed forwards they would be 1, 1, 3)
    from xxpo_lab.advantages import reward_to_go

    mask = torch.ones(1, 3, dtype=F64)
    check(reward_to_go(torch.tensor([[1.0, 0.0, 2.0]], dtype=F64), mask, 0.5), [[1.5, 1.0, 2.0]])
    check(reward_to_go(torch.tensor([[1.0, 0.0, 2.0]], dtype=F64), mask, 1.0), [[3.0, 2.0, 2.0]])
    # in reinforce_pp: an outcome reward of 1 on the last of 3 tokens, γ = 0.5 -> returns (0.25, 0.5, 1), whitened
    b = make_batch([1.0, 0.0], lengths=[3, 3], T=3)
    adv, _ = reinforce_pp(b, replace(CFG, G=2, gamma=0.5))
    returns = torch.tensor([0.25, 0.5, 1.0, 0.0, 0.0, 0.0], dtype=F64)
    expected = (returns - returns.mean()) / (returns.var() + 1e-8).sqrt()
    check(adv.reshape(-1), expected)


def test_prompt_critic_advantage_is_reward_minus_sigmoid_value():
    # V = (0, ln 3) -> σ(V) = (0.5, 0.75); R = (1, 0) -> A = (0.5, -0.75); the critic regresses on R
    b = replace(make_batch([1.0, 0.0], lengths=[2, 1], T=2), values=torch.tensor([0.0, math.log(3.0)], dtype=F64))
    adv, target = prompt_critic(b, Config(loss="sppo", G=1))
    check(adv, [[0.5, 0.5], [-0.75, 0.0]])
    check(target, [1.0, 0.0])


def test_get_advantage_unknown_name_raises_key_error_listing_valid_names():
    with pytest.raises(KeyError) as err:
        get_advantage("gae2")
    assert err.value.args[0] == "unknown advantage 'gae2'; the advantages are: " + ", ".join(ADVANTAGES)


# -------------------------------------------------------------------------------------------------
# GAE on 3 tokens: rewards (0, 0, 1) (outcome on the last token), values V = (0.5, 0.6, 0.8), γ = 1, V_3 = 0
# δ_t = r_t + V_{t+1} - V_t: δ_0 = 0.6 - 0.5 = 0.1, δ_1 = 0.8 - 0.6 = 0.2, δ_2 = 1 + 0 - 0.8 = 0.2

GAE_CASES = [
    # λ = 1: A_t = Σ δ = return - V_t = 1 - V_t = (0.5, 0.4, 0.2)
    (1.0, [0.5, 0.4, 0.2]),
    # λ = 0.95: A_2 = 0.2, A_1 = 0.2 + 0.95·0.2 = 0.39, A_0 = 0.1 + 0.95·0.39 = 0.4705
    (0.95, [0.4705, 0.39, 0.2]),
    # λ = 0: A_t = δ_t (one-step TD)
    (0.0, [0.1, 0.2, 0.2]),
]


@pytest.mark.parametrize("lam, expected", GAE_CASES)
def test_gae_golden_values(lam, expected):
    token_reward = torch.tensor([[0.0, 0.0, 1.0]], dtype=F64)
    values = torch.tensor([[0.5, 0.6, 0.8]], dtype=F64)
    adv, returns = gae(token_reward, values, torch.ones_like(values), gamma=1.0, lam=lam)
    check(adv, [expected])
    check(returns, adv + values)  # with λ = 1 the returns are the Monte-Carlo return, 1 everywhere


def test_gae_ignores_values_under_the_mask():
    # verl's invariance test: row 1 ends after 2 tokens, so neither its 3rd value (it would leak into δ_1)
    # nor its 3rd reward may change anything
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]], dtype=F64)
    token_reward = torch.tensor([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0]], dtype=F64)
    values = torch.tensor([[0.5, 0.6, 0.8], [0.3, 0.7, 0.0]], dtype=F64)
    adv, returns = gae(token_reward, values, mask, gamma=1.0, lam=0.95)
    adv_n, returns_n = gae(token_reward + 2.0 * (1 - mask), values + 5.0 * (1 - mask), mask, gamma=1.0, lam=0.95)
    check(adv_n, adv)
    check(returns_n, returns)
    # row 1: δ_0 = 0 + 0.7 - 0.3 = 0.4, δ_1 = 1 + 0 - 0.7 = 0.3 (V after the last token is 0), A_0 = 0.4 + 0.95·0.3
    check(adv[1], [0.685, 0.3, 0.0])


def test_kl_in_the_reward_is_a_per_token_penalty_with_the_outcome_on_the_last_token():
    """Ziegler et al.: r_t = -β·k(behav, ref)_t, the outcome added at the EOS token; the sequence reward is the sum."""
    from xxpo_lab.advantages import shaped_rewards

    b = make_batch([1.0, 0.0], lengths=[3, 2], T=3)
    b = replace(b, behav_logp=torch.tensor([[-0.5, -1.0, -0.2], [-0.3, -0.7, -9.0]], dtype=F64),
                ref_logp=torch.tensor([[-0.7, -1.0, -0.1], [-0.3, -0.2, -9.0]], dtype=F64))
    k1 = (b.behav_logp - b.ref_logp) * b.mask  # [[0.2, 0, -0.1], [0, -0.5, 0 (padding)]]
    seq, tok = shaped_rewards(b, replace(CFG, beta=0.5, kl_in="reward", kl_estimator="k1"))
    check(tok, [[-0.1, 0.0, 1.0 + 0.05], [0.0, 0.25, 0.0]])
    check(seq, [1.0 - 0.5 * 0.1, 0.0 + 0.5 * 0.5])
    check(seq, (tok * b.mask).sum(-1))
    check(k1.sum(-1), [0.1, -0.5])
    seq_off, tok_off = shaped_rewards(b, replace(CFG, beta=0.5, kl_in="loss", kl_estimator="k1"))
    check(seq_off, [1.0, 0.0])  # with the KL in the loss, the reward is the outcome alone
    check(tok_off, [[0.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
