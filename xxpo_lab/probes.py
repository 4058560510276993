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
import random

import pandas as pd
import torch
from torch import Tensor

from xxpo_lab.policy import encode_prompts
from xxpo_lab.rollout import decode, positions, sample
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
    prefix, so one pass gives every factor of E[N]. As in `policy.token_logp`, the logits at position
    L-1+t predict response token t (the shift by one), divided by the sampling temperature.
    Args: problems, answers (lists of N; answers of 1 .. T_max-1 tokens).
    Returns: (p_dot, p_eos), both [N, T_max] on the CPU, indexed by k, 0 beyond the budget T_max - |a|.
    """
    device = next(model.parameters()).device
    dot_id, eos_id = tokenizer.convert_tokens_to_ids(FILLER), tokenizer.eos_token_id
    rows = [tokenizer(a, add_special_tokens=False)["input_ids"] for a in answers]
    n_ans = torch.tensor([len(r) for r in rows], device=device)  # [N]
    assert ((n_ans >= 1) & (n_ans < T_max)).all(), "answers need 1 .. T_max - 1 tokens"
    resp = torch.tensor([r + [dot_id] * (T_max - len(r)) for r in rows], device=device)  # [N, T]
    prompt_ids, prompt_mask = encode_prompts(tokenizer, problems, device)
    L = prompt_ids.shape[1]
    x = torch.cat([prompt_ids, resp], dim=1)  # [N, L+T]
    attn = torch.cat([prompt_mask, torch.ones_like(resp)], dim=1)
    logits = model(input_ids=x, attention_mask=attn, position_ids=positions(attn)).logits[:, L - 1:-1]  # [N, T, V]
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    t = n_ans[:, None] + torch.arange(T_max, device=device)[None, :]  # [N, T]: response position of decision k
    inside = t < T_max  # within the budget
    t = t.clamp(max=T_max - 1)
    p_dot = probs[..., dot_id].gather(1, t) * inside
    p_eos = probs[..., eos_id].gather(1, t) * inside
    return p_dot.cpu(), p_eos.cpu()


def filler_probe(model, tokenizer, task: Task, problems: list[Problem], T_max: int, temperature: float,
                 rng: random.Random) -> dict[str, float]:
    """Teacher-forced E[N | x, reference answer] and E[N | x, `Task.wrong_answer`] on fixed prompts.

    One wrong answer per prompt, drawn with `rng`: the kind of error a warm start's wrong
    demonstrations carry (`Config.demo_wrong_frac`). Returns means over prompts: 'correct', 'wrong',
    'gap' (wrong - correct), its standard error 'gap_se' (paired on prompts), and 'eos_correct',
    'eos_wrong' (probability that the dots end with EOS rather than a stray token).
    """
    wrong = [task.wrong_answer(p, rng) for p in problems]
    pd_c, pe_c = dot_probs(model, tokenizer, problems, [p.solution for p in problems], T_max, temperature)
    pd_w, pe_w = dot_probs(model, tokenizer, problems, wrong, T_max, temperature)
    c, w = expected_filler(pd_c), expected_filler(pd_w)  # [N] each
    return {"correct": c.mean().item(), "wrong": w.mean().item()} | _paired(c, w) | {
        "eos_correct": eos_after_filler(pd_c, pe_c).mean().item(),
        "eos_wrong": eos_after_filler(pd_w, pe_w).mean().item()}


@torch.no_grad()
def paired_probe(model, tokenizer, task: Task, problems: list[Problem], G: int, T_max: int, temperature: float,
                 gen: torch.Generator) -> dict[str, float]:
    """On-policy conditional filler: E[N | x, own wrong answer] vs E[N | x, own correct answer].

    Samples G responses per prompt (as training does) and keeps each well-formed answer (the text
    before the trailing dots). A prompt counts when it has at least one correct and one wrong answer;
    for it, c and w are the means of E[N | x, a] over its correct and its wrong samples (so answers
    the model samples often weigh more, as in the policy gradient). Prompt composition cancels in the
    paired gap w - c. Returns means over the prompts used: 'correct', 'wrong', 'gap', 'gap_se', plus
    'prompts_used' (share of prompts) and 'other_wrong_frac' (share of wrong samples that were
    malformed, not a wrong answer; they have no answer to condition on).
    """
    device = next(model.parameters()).device
    group = [p for p in problems for _ in range(G)]
    prompt_ids, prompt_mask = encode_prompts(tokenizer, group, device)
    resp, _, _, lengths, truncated = sample(model, prompt_ids, prompt_mask, T_max, temperature, gen,
                                            tokenizer.eos_token_id, tokenizer.pad_token_id)
    texts = decode(tokenizer, resp.cpu(), lengths.cpu(), truncated.cpu())
    pairs, n_wrong, n_other = [], 0, 0  # pairs: (prompt index, answer, is correct)
    for i, p in enumerate(problems):
        parsed = [parse_response(t) for t in texts[i * G:(i + 1) * G]]
        answers = [a for a, _ in filter(None, parsed)
                   if len(tokenizer(a, add_special_tokens=False)["input_ids"]) < T_max]
        ok = [task.check(p, a) for a in answers]
        n_wrong += G - sum(ok)
        n_other += G - len(answers)
        if any(ok) and not all(ok):
            pairs += [(i, a, k) for a, k in zip(answers, ok)]
    out = {"prompts_used": len({i for i, _, _ in pairs}) / len(problems),
           "other_wrong_frac": n_other / max(n_wrong, 1)}
    if not pairs:
        return out | {"correct": float("nan"), "wrong": float("nan"), "gap": float("nan"), "gap_se": float("nan")}
    p_dot, _ = dot_probs(model, tokenizer, [problems[i] for i, _, _ in pairs], [a for _, a, _ in pairs], T_max,
                         temperature)
    table = pd.DataFrame({"prompt": [i for i, _, _ in pairs], "ok": [k for _, _, k in pairs],
                          "fill": expected_filler(p_dot).tolist()})
    means = table.groupby(["prompt", "ok"])["fill"].mean().unstack()  # [prompts used, (wrong, correct)]
    c, w = torch.tensor(means[True].values), torch.tensor(means[False].values)
    return out | {"correct": c.mean().item(), "wrong": w.mean().item()} | _paired(c, w)


def conditional_length(model, tokenizer, task: Task, cfg, n_prompts: int = 200, G: int = 8) -> dict[str, float]:
    """Both probes on the held-out prompts, with their own seeded randomness (training's is untouched).

    The one call a chapter (or a training hook) needs: `probe/tf_*` from `filler_probe` on
    `task.eval_set(n_prompts)`, `probe/own_*` from `paired_probe` on its first half with G samples each.
    Deterministic given the policy and cfg.seed. Returns a flat dict of floats.
    """
    problems = task.eval_set(n_prompts)
    tf = filler_probe(model, tokenizer, task, problems, cfg.T_max, cfg.temperature, random.Random(cfg.seed + 17))
    own = paired_probe(model, tokenizer, task, problems[:max(1, n_prompts // 2)], G, cfg.T_max, cfg.temperature,
                       torch.Generator(device=next(model.parameters()).device).manual_seed(cfg.seed + 17))
    return {f"probe/tf_{k}": v for k, v in tf.items()} | {f"probe/own_{k}": v for k, v in own.items()}


def _paired(c: Tensor, w: Tensor) -> dict[str, float]:
    """Mean and standard error of the paired difference w - c."""
    diff = (w - c).double()
    se = (diff.std() / math.sqrt(len(diff))).item() if len(diff) > 1 else float("nan")
    return {"gap": diff.mean().item(), "gap_se": se}


# -------------------------------------------------------------------------------------------------
# the logged, marginal view: correct vs incorrect length per window of a run


def windowed_lengths(hist: pd.DataFrame, edges: list[int], batch_size: int) -> pd.DataFrame:
    """Accuracy and mean length of correct / incorrect responses per window of steps, sample-weighted.

    A window [a, b) pools its steps' responses: L_c = Σ_s n_c(s)·len_c(s) / Σ_s n_c(s), likewise L_w,
    with n_c(s) = reward/correct_frac(s)·B. The gap L_w - L_c mixes the conditional effect with
    composition (which prompts happen to be answered right); read it next to the probes.
    Args: hist from `train`; edges, e.g. [0, 20, 100, 200]; batch_size B = P·G. Returns one row per window.
    """
    h = hist[hist["reward/correct_frac"].notna()]  # the last row holds only the final evaluation
    out = []
    for a, b in zip(edges[:-1], edges[1:]):
        w = h[(h["step"] >= a) & (h["step"] < b)]
        n_c = w["reward/correct_frac"] * batch_size
        n_w = batch_size - n_c
        l_c = (n_c * w["len/correct_mean"].fillna(0.0)).sum() / n_c.sum()
        l_w = (n_w * w["len/incorrect_mean"].fillna(0.0)).sum() / n_w.sum()
        out.append({"window": f"{a}-{b - 1}", "accuracy": w["reward/correct_frac"].mean(), "len_correct": l_c,
                    "len_incorrect": l_w, "gap": l_w - l_c})
    return pd.DataFrame(out)
