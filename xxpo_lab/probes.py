"""Conditional-length probes: how much filler a GPT-2 policy plans after a right and after a wrong answer.

Dr. GRPO's length bias (arXiv 2503.20783) can only move length if, inside a group, the policy's
length decisions depend on whether its answer is right. Marginal curves (`len/correct_mean` vs
`len/incorrect_mean`) mix that up with composition: which prompts happen to be answered right. These
probes measure the conditional quantity itself, exactly, from the model's next-token probabilities:

    E[N | x, a] = Σ_{k=1..K} Π_{j<k} π('.' | x, a, '.'^j),     K = T_max - |a|

the expected number of consecutive filler dots after prompt x and answer a (teacher-forced), within
the response budget. `filler_probe` asks it for the reference answer and for `Task.wrong_answer`;
`paired_probe` for the model's own sampled answers, paired on prompts, so composition cancels.
Book: ch. 3.
"""

from __future__ import annotations

import math

import pandas as pd
import torch
from torch import Tensor

from xxpo_lab.policy import encode_prompts, token_logp
from xxpo_lab.rollout import decode, sample
from xxpo_lab.tasks import FILLER, Problem, Task, parse_response

# -------------------------------------------------------------------------------------------------
# pure reductions


def filler_distribution(p_dot: Tensor) -> Tensor:
    """Distribution of the number N of consecutive dots, from the per-step dot probabilities.

    P(N ≥ k) = Π_{j<k} p_dot[:, j], so P(N = k) = P(N ≥ k)·(1 - p_dot[:, k]) for k < K and
    P(N = K) = P(N ≥ K) (the budget ran out: a truncated response). Entries of p_dot beyond a row's
    budget must be 0, which ends the run there.

    Args: p_dot [N, K], p_dot[:, j] = π('.' | x, a, '.'^j). Returns: probs [N, K+1], rows sum to 1.
    """
    assert p_dot.dim() == 2, p_dot.shape
    at_least = torch.cumprod(torch.cat([torch.ones_like(p_dot[:, :1]), p_dot], dim=1), dim=1)  # [N, K+1]: P(N ≥ k)
    stop = torch.cat([1.0 - p_dot, torch.ones_like(p_dot[:, :1])], dim=1)  # [N, K+1]: P(no dot at k | N ≥ k)
    return at_least * stop


def expected_filler(p_dot: Tensor) -> Tensor:
    """E[N] = Σ_{k≥1} P(N ≥ k) = Σ_k Π_{j<k} p_dot[:, j]: expected consecutive dots. [N, K] -> [N]."""
    assert p_dot.dim() == 2, p_dot.shape
    return torch.cumprod(p_dot, dim=1).sum(-1)


def eos_after_filler(p_dot: Tensor, p_eos: Tensor) -> Tensor:
    """P(the dots end with EOS) = Σ_k P(N ≥ k)·p_eos[:, k]: a well-formed stop, not a stray letter.

    Args: p_dot, p_eos [N, K] (zero beyond the budget). Returns: [N].
    """
    assert p_dot.shape == p_eos.shape
    at_least = torch.cumprod(torch.cat([torch.ones_like(p_dot[:, :1]), p_dot[:, :-1]], dim=1), dim=1)  # [N, K]
    return (at_least * p_eos).sum(-1)


# -------------------------------------------------------------------------------------------------
# the model's next-token probabilities along the all-dots path


@torch.no_grad()
def dot_probs(model, tokenizer, problems: list[Problem], answers: list[str], T_max: int,
              temperature: float) -> tuple[Tensor, Tensor]:
    """π('.') and π(EOS) after prompt + answer + k dots, for k = 0 .. T_max - |a| - 1, in one forward pass.

    The response is teacher-forced as answer + dots up to T_max tokens: N ≥ k needs exactly that
    prefix, so one pass gives every factor of E[N]. Logits are divided by the sampling temperature,
    as the sampler does.
    Args: problems, answers (lists of N). Returns: (p_dot, p_eos), both [N, T_max], 0 beyond the budget.
    """
    dot_id, eos_id = tokenizer.convert_tokens_to_ids(FILLER), tokenizer.eos_token_id
    rows = [tokenizer(a, add_special_tokens=False)["input_ids"] for a in answers]
    n_ans = torch.tensor([len(r) for r in rows])  # [N]
    assert (n_ans >= 1).all() and (n_ans < T_max).all(), "answers need 1 .. T_max - 1 tokens"
    resp = torch.tensor([r + [dot_id] * (T_max - len(r)) for r in rows])  # [N, T_max]
    prompt_ids, prompt_mask = encode_prompts(tokenizer, problems, resp.device)
    device = next(model.parameters()).device
    prompt_ids, prompt_mask, resp = prompt_ids.to(device), prompt_mask.to(device), resp.to(device)
    L = prompt_ids.shape[1]
    x = torch.cat([prompt_ids, resp], dim=1)  # [N, L+T]
    attn = torch.cat([prompt_mask, torch.ones_like(resp)], dim=1)
    from xxpo_lab.rollout import positions
    logits = model(input_ids=x, attention_mask=attn, position_ids=positions(attn)).logits[:, L - 1:-1]  # [N, T, V]
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    # response position t predicts the token after answer + (t - |a|) dots
    k = torch.arange(T_max)  # [T]
    idx = (n_ans[:, None] + k[None, :]).clamp(max=T_max - 1).to(device)  # [N, T]
    inside = (n_ans[:, None] + k[None, :] < T_max).to(device)  # [N, T]: within the budget
    p_dot = probs[..., dot_id].gather(1, idx) * inside
    p_eos = probs[..., eos_id].gather(1, idx) * inside
    return p_dot.cpu(), p_eos.cpu()


def filler_probe(model, tokenizer, task: Task, problems: list[Problem], T_max: int, temperature: float,
                 rng) -> dict[str, float]:
    """Teacher-forced E[dots | x, correct answer] and E[dots | x, Task.wrong_answer] on fixed prompts.

    The wrong answers are drawn with `rng` (a `random.Random`), one per prompt, the kind of error the
    warm start's wrong demonstrations carry. Returns means over prompts: 'correct', 'wrong', 'gap'
    (wrong - correct) and its standard error 'gap_se' (paired on prompts), and the EOS probabilities.
    """
    wrong = [task.wrong_answer(p, rng) for p in problems]
    pd_c, pe_c = dot_probs(model, tokenizer, problems, [p.solution for p in problems], T_max, temperature)
    pd_w, pe_w = dot_probs(model, tokenizer, problems, wrong, T_max, temperature)
    c, w = expected_filler(pd_c), expected_filler(pd_w)
    diff = w - c
    return {"correct": c.mean().item(), "wrong": w.mean().item(), "gap": diff.mean().item(),
            "gap_se": (diff.std() / math.sqrt(len(diff))).item(),
            "eos_correct": eos_after_filler(pd_c, pe_c).mean().item(),
            "eos_wrong": eos_after_filler(pd_w, pe_w).mean().item()}


@torch.no_grad()
def paired_probe(model, tokenizer, task: Task, problems: list[Problem], G: int, T_max: int, temperature: float,
                 gen: torch.Generator) -> dict[str, float]:
    """On-policy conditional filler: E[dots | x, own wrong answer] vs E[dots | x, correct answer].

    Samples G responses per prompt. A prompt counts when its samples hold at least one correct and
    one wrong (well-formed) answer; for it, c = E[N | x, solution] and w = the mean of E[N | x, a]
    over its wrong samples (weighted by how often each was sampled). Means over those prompts, and the
    standard error of the paired gap w - c: prompt composition cancels. Returns a dict of floats
    (also the share of prompts used and of wrong samples that were malformed or truncated, not a
    wrong answer).
    """
    group = [p for p in problems for _ in range(G)]
    device = next(model.parameters()).device
    prompt_ids, prompt_mask = encode_prompts(tokenizer, group, device)
    resp, _, _, lengths, truncated = sample(model, prompt_ids, prompt_mask, T_max, temperature, gen,
                                            tokenizer.eos_token_id, tokenizer.pad_token_id)
    texts = decode(tokenizer, resp.cpu(), lengths.cpu(), truncated.cpu())
    pairs, n_wrong, n_other = [], 0, 0  # (prompt index, wrong answer)
    for i, p in enumerate(problems):
        answers = [parse_response(t) for t in texts[i * G:(i + 1) * G]]
        good = [a[0] for a in answers if a is not None and task.check(p, a[0])]
        bad = [a[0] for a in answers if a is not None and not task.check(p, a[0]) and len(a[0]) < T_max]
        n_wrong += G - len(good)
        n_other += G - len(good) - len(bad)
        if good and bad:
            pairs += [(i, a) for a in bad]
    if not pairs:
        return {"prompts_used": 0.0, "correct": float("nan"), "wrong": float("nan"), "gap": float("nan"),
                "gap_se": float("nan"), "other_wrong_frac": n_other / max(n_wrong, 1)}
    used = sorted({i for i, _ in pairs})
    pd_c, _ = dot_probs(model, tokenizer, [problems[i] for i in used], [problems[i].solution for i in used], T_max,
                        temperature)
    pd_w, _ = dot_probs(model, tokenizer, [problems[i] for i, _ in pairs], [a for _, a in pairs], T_max, temperature)
    c = dict(zip(used, expected_filler(pd_c).tolist()))
    w = pd.Series(expected_filler(pd_w).tolist(), index=[i for i, _ in pairs]).groupby(level=0).mean()
    cs = torch.tensor([c[i] for i in w.index])
    ws = torch.tensor(w.values)
    diff = ws - cs
    se = (diff.std() / math.sqrt(len(diff))).item() if len(diff) > 1 else float("nan")
    return {"prompts_used": len(used) / len(problems), "correct": cs.mean().item(), "wrong": ws.mean().item(),
            "gap": diff.mean().item(), "gap_se": se, "other_wrong_frac": n_other / max(n_wrong, 1)}


# -------------------------------------------------------------------------------------------------
# the logged, marginal view: correct vs incorrect length per window of a run


def windowed_lengths(hist: pd.DataFrame, edges: list[int], batch_size: int) -> pd.DataFrame:
    """Accuracy and mean length of correct / incorrect responses per window of steps, sample-weighted.

    A window [a, b) pools its steps' responses: L_c = Σ_s n_c(s)·len_c(s) / Σ_s n_c(s), likewise L_w,
    with n_c(s) = reward/correct_frac(s)·B. Steps with no correct (or no wrong) sample add nothing.
    The gap L_w - L_c mixes the conditional effect with composition; read it next to the probes.
    Args: hist from `train`; edges, e.g. [0, 20, 100, 200]; batch_size B = P·G. Returns one row per window.
    """
    h = hist[hist["step"] < hist["step"].max()] if "len/mean" not in hist.iloc[-1] or pd.isna(
        hist.iloc[-1].get("len/mean")) else hist
    out = []
    for a, b in zip(edges[:-1], edges[1:]):
        w = h[(h["step"] >= a) & (h["step"] < b)]
        n_c = w["reward/correct_frac"] * batch_size
        n_w = batch_size - n_c
        l_c = (n_c * w["len/correct_mean"].fillna(0)).sum() / n_c.sum()
        l_w = (n_w * w["len/incorrect_mean"].fillna(0)).sum() / n_w.sum()
        out.append({"window": f"{a}-{b - 1}", "accuracy": w["reward/correct_frac"].mean(), "len_correct": l_c,
                    "len_incorrect": l_w, "gap": l_w - l_c})
    return pd.DataFrame(out)
