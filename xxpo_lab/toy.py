"""The length bias without a language model: a two-stage toy policy trained with the lab's own losses.

A response is one answer token (right with probability σ(θ)), then continue/stop decisions: after k
filler tokens the policy writes another with probability σ(c_k), else EOS. The reward is 1 for a
right answer that stopped within T_max. The continue logits come in two sets, one used after a right
answer and one after a wrong answer ("knows": the length decision can see correctness), or one shared
set ("cannot tell"). Dr. GRPO's length bias (arXiv 2503.20783) needs the first: the 1/|y_i| of
GRPO's per-sequence mean can only move length if length decisions depend on correctness inside a
group. The loss and the advantage are `LOSSES[name].fn` and `ADVANTAGES[adv]`, unchanged: they are
pure functions over [B, T] tensors, so they train this policy as they train GPT-2.

Also here, two model-free views of the mechanism: the per-token gradient weight each aggregation
gives a sequence of a given length and advantage (`token_weights`), and the advantage mass a group
carries as a function of its pass rate (`group_advantage_mass`, the difficulty bias), and where a run's
push goes by pass rate (`difficulty_bias`). Book: ch. 3.
"""

from __future__ import annotations

import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor

from xxpo_lab.advantages import get_advantage
from xxpo_lab.batch import Batch
from xxpo_lab.config import Config, resolve
from xxpo_lab.losses import get_loss
from xxpo_lab.probes import expected_filler


def toy_config(loss: str, P: int = 16, G: int = 8, T_max: int = 16, **kw) -> Config:
    """The Config the lab's losses read (eps, beta, T_max, G): task fields are placeholders, the
    shortest task (copy, difficulty 2) so that any T_max >= 3 is valid."""
    return resolve(Config(task="copy", difficulty=2, loss=loss, P=P, G=G, T_max=T_max, **kw))


def batch_of(logp: Tensor, mask: Tensor, reward: Tensor, truncated: Tensor) -> Batch:
    """An on-policy Batch around per-token log-probs [B, T]: prox = behav = sg(logp)."""
    return Batch.of(mask, behav_logp=logp.detach() * mask, prox_logp=logp.detach() * mask, truncated=truncated,
                    reward=reward, correct=reward > 0)


# -------------------------------------------------------------------------------------------------
# the mechanism, model-free


def token_weights(loss: str, lengths: Tensor, adv: Tensor, T_max: int) -> Tensor:
    """Per-token gradient weight w_i = -∂loss/∂logp_{i,t} that `loss` gives the tokens of sequence i.

    On-policy (r = 1, nothing clipped) the gradient of every loss here is Σ_i Σ_t w_i ∇logp_{i,t}:
    grpo  w_i = A_i / (B·|y_i|)   (a long wrong answer is pushed down least, a short right one up most)
    dr_grpo  w_i = A_i / (B·T_max)   bnpo / dapo  w_i = A_i / Σ_j |y_j|   (the same for every token)
    Computed by autograd through `LOSSES[loss].fn`, not re-typed.
    Args: lengths [B] (tokens incl. EOS, 1..T_max); adv [B] (any values, taken as given). Returns: w [B].
    """
    assert lengths.shape == adv.shape and lengths.dim() == 1
    mask = (torch.arange(T_max)[None, :] < lengths[:, None]).double()  # [B, T]
    logp = torch.full(mask.shape, -1.0, dtype=torch.float64, requires_grad=True)
    b = batch_of(logp, mask, torch.zeros(len(adv), dtype=torch.float64), torch.zeros(len(adv), dtype=torch.bool))
    b.adv = adv.double()[:, None] * mask
    value, _ = get_loss(loss).fn(logp, b, toy_config(loss, P=1, G=len(adv), T_max=T_max))
    (grad,) = torch.autograd.grad(value, logp)
    return -grad[:, 0]


def group_advantage_mass(rewards: Tensor, adv: str, adv_eps: float = 1e-4) -> Tensor:
    """Σ_i |A_i| over each group: how much push a prompt gets, from `ADVANTAGES[adv]` itself.

    With k right of G (binary reward, p = k/G): mean-centring ('dr_grpo') gives 2k(G-k)/G; z-scoring
    ('grpo', unbiased std) divides that by sqrt(k(G-k)/(G(G-1))), so it grows like sqrt(p(1-p))
    instead of p(1-p): prompts almost always right or wrong weigh relatively more (the difficulty bias).
    Args: rewards [P, G]. Returns: [P].
    """
    P, G = rewards.shape
    flat = rewards.reshape(-1).double()
    mask = torch.ones(P * G, 1, dtype=torch.float64)
    b = batch_of(torch.zeros_like(mask), mask, flat, torch.zeros(P * G, dtype=torch.bool))
    a, _ = get_advantage(adv)(b, toy_config("grpo", P=P, G=G, T_max=3, adv=adv, adv_eps=adv_eps))
    return a.abs().view(P, G).sum(-1)


def difficulty_bias(G: int, groups: pd.Series | None = None) -> pd.DataFrame:
    """Where the push goes, by pass rate: one row per k = 0..G right answers in a group of G.

    'mass_centred' and 'mass_zscore' are Σ|A| of such a group under mean-centring and z-scoring (from the
    registered advantages, `group_advantage_mass`), 'rel_*' the same relative to a group with G/2 right.
    Given `groups`, the share of a run's groups with each k (e.g. averaged from `tables.group_counts`),
    'share_*' is the share of all advantage mass each k receives, and 'groups' that input.
    """
    k = torch.arange(G + 1)
    rewards = (torch.arange(G)[None, :] < k[:, None]).float()  # [G+1, G]: group k has k right answers
    out = pd.DataFrame({"k": k.numpy()}, index=k.numpy())
    if groups is not None:
        out["groups"] = groups.reindex(out.index, fill_value=0.0).to_numpy()
    for adv, name in (("dr_grpo", "centred"), ("grpo", "zscore")):
        mass = group_advantage_mass(rewards, adv).nan_to_num(0.0).numpy()
        out[f"mass_{name}"] = mass
        out[f"rel_{name}"] = mass / mass[G // 2]
        if groups is not None:
            weighted = out["groups"].to_numpy() * mass
            out[f"share_{name}"] = weighted / weighted.sum()
    return out


# -------------------------------------------------------------------------------------------------
# the two-stage policy


class TwoStagePolicy(torch.nn.Module):
    """Answer logit θ, then continue logits c[branch, k] (k = filler tokens so far, k < T_max - 1).

    knows=True: branch 0 after a right answer, 1 after a wrong one. knows=False: one shared row.
    """

    def __init__(self, knows: bool, T_max: int, answer_logit: float = 0.0, continue_logit: float = -1.0):
        super().__init__()
        self.knows, self.T_max = knows, T_max
        self.theta = torch.nn.Parameter(torch.tensor(answer_logit))
        self.cont = torch.nn.Parameter(torch.full((2 if knows else 1, T_max - 1), continue_logit))

    def rows(self, right: Tensor) -> Tensor:
        """Continue logits of each sequence's branch: [B, T_max - 1]."""
        return self.cont[(~right).long()] if self.knows else self.cont.expand(len(right), -1)

    @torch.no_grad()
    def sample(self, B: int, gen: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
        """B responses: right [B] bool, filler n [B] long, truncated [B] bool (no EOS within T_max)."""
        right = torch.rand(B, generator=gen) < torch.sigmoid(self.theta)
        go = torch.rand(B, self.T_max - 1, generator=gen) < torch.sigmoid(self.rows(right))  # [B, K]
        n = torch.cumprod(go.long(), dim=1).sum(-1)  # consecutive 'continue' decisions
        return right, n, n == self.T_max - 1

    def logp(self, right: Tensor, n: Tensor, truncated: Tensor) -> tuple[Tensor, Tensor]:
        """Per-token log-probs and mask [B, T_max]: answer, n filler tokens, EOS (absent when truncated)."""
        c = self.rows(right)  # [B, K], K = T_max - 1
        k = torch.arange(self.T_max - 1)[None, :]
        dots = F.logsigmoid(c) * (k < n[:, None])  # [B, K]: the n 'continue' tokens
        stop = F.logsigmoid(-c) * ((k == n[:, None]) & ~truncated[:, None])  # EOS at decision n
        answer = torch.where(right, F.logsigmoid(self.theta), F.logsigmoid(-self.theta))[:, None]  # [B, 1]
        logp = torch.cat([answer, dots + stop], dim=1)  # [B, T_max]: token t >= 1 is decision t - 1
        length = n + 1 + (~truncated).long()
        mask = (torch.arange(self.T_max)[None, :] < length[:, None]).float()
        return logp * mask, mask

    @torch.no_grad()
    def expected_filler(self) -> tuple[float, float]:
        """Exact E[filler | right answer], E[filler | wrong answer] from the continue logits."""
        p = torch.sigmoid(self.rows(torch.tensor([True, False])))  # [2, K]
        right, wrong = expected_filler(p).tolist()
        return right, wrong


def train_toy(loss: str, knows: bool, steps: int = 300, P: int = 16, G: int = 8, T_max: int = 16,
              lr: float = 0.05, seed: int = 0, adv: str | None = None, optimizer: str = "adam",
              train_answer: bool = True) -> pd.DataFrame:
    """Train the two-stage policy with the lab's loss `loss` and its default (or the given) advantage.

    Adam (lr 0.05 on raw logits: this is a handful of numbers, not a network) or plain SGD
    (optimizer='sgd'; the losses' scales differ, so pick lr per loss), one on-policy update per batch of
    P·G responses, no KL. train_answer=False freezes P(right) at 1/2, so wrong samples never run out.
    Returns one row per step: accuracy and sampled mean length of right and wrong responses (tokens
    incl. EOS), and the exact expected filler after a right and after a wrong answer (`fill_right`,
    `fill_wrong`) of the policy that sampled the step.
    """
    cfg = toy_config(loss, P=P, G=G, T_max=T_max, **({"adv": adv} if adv else {}))
    policy = TwoStagePolicy(knows, T_max)
    policy.theta.requires_grad_(train_answer)
    params = [p for p in policy.parameters() if p.requires_grad]
    optimizers = {"adam": torch.optim.Adam, "sgd": torch.optim.SGD}
    if optimizer not in optimizers:
        raise KeyError(f"unknown optimizer {optimizer!r}; the optimizers are: {', '.join(optimizers)}")
    opt = optimizers[optimizer](params, lr=lr)
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for step in range(steps):
        fill_right, fill_wrong = policy.expected_filler()
        right, n, truncated = policy.sample(P * G, gen)
        logp, mask = policy.logp(right, n, truncated)  # [B, T]
        b = batch_of(logp, mask, (right & ~truncated).float(), truncated)
        b.adv, _ = get_advantage(cfg.adv)(b, cfg)
        value, _ = get_loss(loss).fn(logp, b, cfg)
        opt.zero_grad()
        value.backward()
        opt.step()
        length, ok = b.lengths.float(), b.correct
        rows.append({"step": step, "accuracy": ok.float().mean().item(),
                     "len_correct": length[ok].mean().item() if ok.any() else float("nan"),
                     "len_incorrect": length[~ok].mean().item() if (~ok).any() else float("nan"),
                     "n_incorrect": int((~ok).sum()), "fill_right": fill_right, "fill_wrong": fill_wrong,
                     "p_right": torch.sigmoid(policy.theta).item(), "truncated_frac": truncated.float().mean().item()})
    return pd.DataFrame(rows)
