"""Advantage estimators: from rewards (and a critic's values) to a per-token advantage [B, T].

Each estimator has the signature `fn(b, cfg) -> (adv [B, T], value_target)`, where `value_target`
is what a critic regresses on (GAE's returns [B, T]; SPPO's reward [B]) or None. Groups are
contiguous rows, so group statistics are `reward.view(P, G)`. The registry `ADVANTAGES` at the bottom
lists them; `Config.adv` picks one (None: the loss's default).
"""

from __future__ import annotations

import torch
from torch import Tensor

from xxpo_lab.batch import Batch
from xxpo_lab.blocks import KL_ESTIMATORS

# -------------------------------------------------------------------------------------------------
# rewards


def shaped_rewards(b: Batch, cfg) -> tuple[Tensor, Tensor]:
    """Sequence rewards [B] and per-token rewards [B, T], with the KL penalty when cfg.kl_in == 'reward'.

    Per-token reward (PPO-RLHF, Ziegler et al. 2019): r_t = -β·k(behav, ref)_t, plus the outcome reward
    on the last generated token. The sequence reward is their sum.
    """
    penalty = torch.zeros_like(b.behav_logp)  # [B, T]
    if cfg.kl_in == "reward" and cfg.beta > 0:
        penalty = (
            cfg.beta
            * KL_ESTIMATORS[cfg.kl_estimator](b.behav_logp, b.ref_logp)
            * b.mask
        )
    last = (b.lengths - 1).clamp(
        min=0
    )  # [B] index of EOS (or of the last token when truncated)
    token_reward = -penalty
    token_reward[torch.arange(b.B), last] += b.reward
    return b.reward - penalty.sum(-1), token_reward * b.mask


def _broadcast(per_seq: Tensor, mask: Tensor) -> Tensor:
    """[B] -> [B, T], zero on padding."""
    return per_seq[:, None] * mask


def _masked_whiten(x: Tensor, mask: Tensor) -> Tensor:
    """(x - mean)·rsqrt(var + 1e-8) over the valid tokens of the batch, var with Bessel's correction: TRL's and
    verl's `masked_whiten`, exactly. Zero on padding."""
    n = mask.sum().clamp(min=1.0)
    mean = (x * mask).sum() / n
    var = (((x - mean) * mask) ** 2).sum() / (n - 1).clamp(min=1.0)
    return (x - mean) * torch.rsqrt(var + 1e-8) * mask


def reward_to_go(token_reward: Tensor, mask: Tensor, gamma: float) -> Tensor:
    """G_t = Σ_{s≥t} γ^{s-t} r_s over each response's tokens (0 on padding). Args/returns: [B, T]."""
    returns = torch.zeros_like(token_reward)
    running = torch.zeros_like(token_reward[:, 0])
    for t in reversed(range(token_reward.shape[1])):
        running = (token_reward[:, t] + gamma * running) * mask[:, t]
        returns[:, t] = running
    return returns


# -------------------------------------------------------------------------------------------------
# critic-free estimators


def no_baseline(b: Batch, cfg):
    """A_i = R_i: REINFORCE without a baseline (the high-variance reference point). Book: ch. 2."""
    R, _ = shaped_rewards(b, cfg)
    return _broadcast(R, b.mask), None


def group_zscore(b: Batch, cfg):
    """GRPO: A_i = (R_i - mean_G R) / (std_G R + eps), unbiased std, eps = cfg.adv_eps.

    DeepSeekMath (arXiv 2402.03300). TRL adds 1e-4, verl 1e-6 (`cfg.adv_eps`). A group whose rewards
    are all equal gets A = 0: no signal (DAPO's dynamic sampling drops it). Dividing by the std
    up-weights prompts that are almost always right or wrong (Dr. GRPO's difficulty bias). Book: ch. 2, 3.
    """
    R, _ = shaped_rewards(b, cfg)
    g = R.view(-1, cfg.G)  # [P, G]
    adv = (g - g.mean(-1, keepdim=True)) / (g.std(-1, keepdim=True) + cfg.adv_eps)
    return _broadcast(adv.reshape(-1), b.mask), None


def group_center(b: Batch, cfg):
    """Dr. GRPO: A_i = R_i - mean_G R (no std). With G/(G-1) it is exactly RLOO. arXiv 2503.20783.
    TRL `scale_rewards="none"`, verl `norm_adv_by_std_in_grpo=False`. Book: ch. 2, 3."""
    R, _ = shaped_rewards(b, cfg)
    g = R.view(-1, cfg.G)
    return _broadcast((g - g.mean(-1, keepdim=True)).reshape(-1), b.mask), None


def rloo(b: Batch, cfg):
    """RLOO (Ahmadian et al. 2024, arXiv 2402.14740): A_i = R_i - mean_{j≠i} R_j = G/(G-1)·(R_i - mean R).

    An unbiased baseline: R_i's own sample does not enter it. Book: ch. 2.
    """
    R, _ = shaped_rewards(b, cfg)
    g = R.view(-1, cfg.G)
    return _broadcast(
        (cfg.G / (cfg.G - 1) * (g - g.mean(-1, keepdim=True))).reshape(-1), b.mask
    ), None


def reinforce_pp(b: Batch, cfg):
    """REINFORCE++ (Hu 2025, arXiv 2501.03262): return-to-go, whitened over the whole batch (no groups).

    G_t = Σ_{s≥t} γ^{s-t} r_s (γ = cfg.gamma, verl's algorithm.gamma) with the KL penalty in r when
    cfg.kl_in == 'reward'; A = whiten(G) over all valid tokens of the batch, as verl's
    `compute_reinforce_plus_plus_outcome_advantage`.
    """
    _, token_reward = shaped_rewards(b, cfg)
    return _masked_whiten(reward_to_go(token_reward, b.mask, cfg.gamma), b.mask), None


def reinforce_pp_baseline(b: Batch, cfg):
    """REINFORCE++-baseline: subtract the group mean, then whiten over the batch.

    verl's `reinforce_plus_plus_baseline`; TRL's `scale_rewards="batch"` with group centring.
    """
    R, _ = shaped_rewards(b, cfg)
    g = R.view(-1, cfg.G)
    return _masked_whiten(
        _broadcast((g - g.mean(-1, keepdim=True)).reshape(-1), b.mask), b.mask
    ), None


def win_rate(b: Batch, cfg):
    """Self-Play PO's P̂(y_i ≻ π) - ½, estimated in the group: P̂_i = mean_{j≠i} (1[R_i > R_j] + ½·1[R_i = R_j]).
    arXiv 2405.00675 estimates it with a preference model; a verifiable reward gives it directly. """
    R, _ = shaped_rewards(b, cfg)
    g = R.view(-1, cfg.G)  # [P, G]
    wins = (g[:, :, None] > g[:, None, :]).float() + 0.5 * (
        g[:, :, None] == g[:, None, :]
    ).float()  # [P, G, G]
    p_win = (wins.sum(-1) - 0.5) / (
        cfg.G - 1
    )  # drop the self-comparison (counted as a tie)
    return _broadcast((p_win - 0.5).reshape(-1), b.mask), None


# -------------------------------------------------------------------------------------------------
# critic-based estimators


def gae(
    token_reward: Tensor, values: Tensor, mask: Tensor, gamma: float, lam: float
) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation (Schulman et al. 2015, arXiv 1506.02438) over response tokens.

    δ_t = r_t + γ·V_{t+1} - V_t,  A_t = Σ_l (γλ)^l δ_{t+l},  returns R̂_t = A_t + V_t. The value after the
    last generated token is 0 (the episode ends at EOS); values under the mask are ignored.
    Args: token_reward, values, mask [B, T]. Returns: (adv, returns), both [B, T], zero on padding. Book: ch. 1.
    """
    assert token_reward.shape == values.shape == mask.shape
    values = values * mask
    adv = torch.zeros_like(values)
    running = torch.zeros_like(values[:, 0])
    T = values.shape[1]
    for t in reversed(range(T)):
        next_value = values[:, t + 1] if t + 1 < T else torch.zeros_like(running)
        delta = token_reward[:, t] + gamma * next_value - values[:, t]
        running = (delta + gamma * lam * running) * mask[:, t]
        adv[:, t] = running
    return adv, (adv + values) * mask


def gae_critic(b: Batch, cfg):
    """PPO: GAE from the token critic's values at sampling time, whitened over all valid tokens of the batch
    (TRL's PPO, verl's `gae`). The critic regresses on the returns, computed before whitening. Book: ch. 1, 2."""
    _, token_reward = shaped_rewards(b, cfg)
    adv, returns = gae(token_reward, b.values, b.mask, cfg.gamma, cfg.lam)
    return _masked_whiten(adv, b.mask), returns


def prompt_critic(b: Batch, cfg):
    """Sequence-Level PPO (Wang et al. 2026, arXiv 2604.08865): A_i = R_i - σ(V(x_i)).

    A prompt-only critic predicts the success probability of the prompt (a logit trained with BCE
    on R ∈ {0, 1}), so one sample per prompt suffices (G = 1).
    """
    R, _ = shaped_rewards(b, cfg)
    return _broadcast(R - torch.sigmoid(b.values), b.mask), b.reward


ADVANTAGES = {
    "none": no_baseline,
    "grpo": group_zscore,
    "dr_grpo": group_center,
    "rloo": rloo,
    "reinforce_pp": reinforce_pp,
    "reinforce_pp_baseline": reinforce_pp_baseline,
    "win_rate": win_rate,
    "gae": gae_critic,
    "sppo": prompt_critic,
}

CRITIC_KIND = {"gae": "token", "sppo": "prompt"}
"""Advantage estimators that need a critic, and which kind: per-token values or one value per prompt."""


def get_advantage(name: str):
    """The registered estimator `name`; unknown names list the valid ones."""
    if name not in ADVANTAGES:
        raise KeyError(
            f"unknown advantage {name!r}; the advantages are: {', '.join(ADVANTAGES)}"
        )
    return ADVANTAGES[name]
