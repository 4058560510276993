"""GRPO in one page: the lab's training step with nothing but the algorithm, for reading.

It uses the lab's policy, task and sampler (`rollout.sample`: generation with a KV cache is not the
algorithm) and writes everything else out: the log-probs, the reward, the group advantage, the clipped
loss and the update. A test checks that its first step moves the policy exactly as `train()`'s does.
Book: appendix "The minimal loop".
"""

import random

import torch

from xxpo_lab.config import Config, resolve
from xxpo_lab.policy import make_policy
from xxpo_lab.rollout import decode, sample
from xxpo_lab.tasks import make_task


def token_logp(model, prompt_ids, prompt_mask, resp_ids, temperature=1.0):
    """log π(y_t | x, y_<t) of every response token, [B, T], at the sampling temperature."""
    L = prompt_ids.shape[1]
    ids = torch.cat([prompt_ids, resp_ids], dim=1)  # [B, L+T]
    attn = torch.cat([prompt_mask, torch.ones_like(resp_ids)], dim=1)
    pos = (attn.cumsum(-1) - 1).clamp(min=0)  # prompts are left-padded: count from 0
    logits = model(input_ids=ids, attention_mask=attn, position_ids=pos).logits
    logits = logits[:, L - 1 : -1]  # position L-1+t predicts response token t
    logp_all = torch.log_softmax(logits.float() / temperature, dim=-1)  # [B, T, V]
    return logp_all.gather(-1, resp_ids[..., None]).squeeze(-1)


def grpo_step(policy, opt, task, tok, rng, gen, cfg: Config) -> float:
    """Sample, score, advantage, cfg.epochs clipped updates; the batch's mean reward."""
    P, G, dev = cfg.P, cfg.G, policy.device
    # 1. sample G responses to each of P prompts; the sampler records behav_logp
    problems = task.sample(P, rng)
    enc = tok([p.prompt for p in problems], padding=True, return_tensors="pt").to(dev)
    prompt_ids = enc["input_ids"].repeat_interleave(G, dim=0)  # [B, L], B = P·G
    prompt_mask = enc["attention_mask"].repeat_interleave(G, dim=0)
    eos, pad = tok.eos_token_id, tok.pad_token_id
    resp, mask, behav_logp, lengths, truncated = sample(
        policy, prompt_ids, prompt_mask, cfg.T_max, cfg.temperature, gen, eos, pad)
    T = int(lengths.max())
    resp, mask, behav_logp = resp[:, :T], mask[:, :T], behav_logp[:, :T]  # [B, T]

    # 2. score: reward 1 for a right answer, 0 otherwise
    texts = decode(tok, resp, lengths, truncated)
    asked = [p for p in problems for _ in range(G)]
    right = [task.verify(p, y, bool(t)) for p, y, t in zip(asked, texts, truncated)]
    reward = torch.tensor(right, dtype=torch.float, device=dev)  # [B]

    # 3. group-relative advantage: one number per response
    r = reward.view(P, G)
    adv = (r - r.mean(-1, keepdim=True)) / (r.std(-1, keepdim=True) + cfg.adv_eps)
    adv = adv.view(-1, 1)  # [B, 1]: the same for every token of a response

    # 4. several updates on this one batch: PPO's clip, averaged per response
    for _ in range(cfg.epochs):
        logp = token_logp(policy, prompt_ids, prompt_mask, resp, cfg.temperature)
        ratio = torch.exp(logp - behav_logp)  # 1 on the first update
        clipped = torch.clamp(ratio, 1 - cfg.eps_low, 1 + cfg.eps_high)
        per_token = -torch.min(ratio * adv, clipped * adv)  # [B, T]
        loss = ((per_token * mask).sum(-1) / mask.sum(-1)).mean()  # the 1/|y_i|
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.max_grad_norm)
        opt.step()
    return reward.mean().item()


def train(cfg: Config) -> list[float]:
    """cfg.steps GRPO steps from the lab's warm start; the mean reward of each step's batch."""
    cfg = resolve(cfg)
    policy, tok, _ = make_policy(cfg)
    task = make_task(cfg.task, cfg.difficulty)
    opt = torch.optim.AdamW(policy.parameters(), lr=cfg.lr,
                            weight_decay=cfg.weight_decay)
    rng = random.Random(cfg.seed)  # which prompts
    gen = torch.Generator(policy.device).manual_seed(cfg.seed)  # which responses
    rewards = []
    for step in range(cfg.steps):
        for group in opt.param_groups:  # linear warmup of the learning rate
            group["lr"] = cfg.lr * min(1.0, (step + 1) / cfg.warmup_steps)
        rewards.append(grpo_step(policy, opt, task, tok, rng, gen, cfg))
    return rewards
