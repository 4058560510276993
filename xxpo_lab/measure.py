"""Measurements at fixed parameters, outside training: gradient statistics, critic fitting, score norms,
the token ratios of a reused batch, what sampler noise does to a loss's gradient, the three policies
of a stale batch, and what a finished run's critic knows.

These answer the chapters' questions about a policy as it is (the warm start, a finished run, or the
state after some steps): how noisy is the policy-gradient estimate under each baseline and why (ch. 2),
what the ratios and policies of a reused or stale batch are (ch. 5-7), how well a critic predicts the
outcome (ch. 8). They reuse the training loop's own collection and loss code, with their own seeded
randomness.
"""

from __future__ import annotations

import random
from dataclasses import replace

import pandas as pd
import torch

from xxpo_lab.config import Config, resolve, sized
from xxpo_lab.loop import (
    State,
    collect,
    critic_explained_variance,
    critic_update,
    gradient_stats,
    loss_of,
    prepare,
    setup,
    training_step,
)
from xxpo_lab.policy import pick_device, token_logp


def fit_critic(state: State, steps: int, seed: int) -> float:
    """Train only the critic, at the current (fixed) policy, on `steps` fresh batches; returns the mean
    explained variance of the last 10 batches (measured before each update). Gives a baseline to
    measure, not a training run. Book: ch. 2."""
    rng, gen = random.Random(seed), torch.Generator(device=state.device).manual_seed(seed)
    samples_before = state.samples
    explained = []
    for _ in range(steps):
        b, _ = collect(state, state.policy, 0, rng, gen, {})
        prepare(state, b, {}, recompute_prox=False)
        explained.append(critic_explained_variance(b))
        critic_update(state, b)
    state.samples = samples_before
    return sum(explained[-10:]) / len(explained[-10:])


def trained_state(cfg: Config, seed: int, steps: int) -> State:
    """The state of run `cfg` (seed `seed`) after its first `steps` training steps, critic included: the
    same steps `train` takes, for measurements of a policy or critic in the middle of training."""
    state = setup(resolve(sized(replace(cfg, seed=seed))), pick_device())
    for step in range(steps):  # evaluation is left out: it has its own generator and changes nothing here
        state.rows.append(training_step(state, step))
    return state


def critic_by_position(run, batches: int = 4, seed: int = 0) -> pd.DataFrame:
    """What a finished run's critic knows, token by token: sample `batches` fresh batches with the run's final
    policy and read its final critic's prediction of each response's outcome R.

    A token critic (adv='gae') gives one row per valid token: V(s_t) at position t predicts the return, which
    with gamma = 1 and no KL in the reward is R at every t. A prompt critic (adv='sppo') gives one row per
    response, t = -1 (it reads the prompt only), value σ(V(x)). Columns: batch, row, t, value, reward.
    run: a History or a run key (`compare`'s 'key' column). Cached like a run. Book: ch. 8."""
    from xxpo_lab.runs import cached_table, final_state

    key = run if isinstance(run, str) else run.attrs["key"]

    def compute() -> pd.DataFrame:
        state = final_state(key)
        rng, gen = random.Random(seed), torch.Generator(device=state.device).manual_seed(seed)
        parts = []
        for i in range(batches):
            b, _ = collect(state, state.policy, 0, rng, gen, {})
            with torch.no_grad():
                values = state.critic(b.prompt_ids, b.prompt_mask, b.resp_ids)
            if values.dim() == 1:  # the prompt critic: one logit per response's prompt
                rows, t, value = torch.arange(b.B), torch.full((b.B,), -1), torch.sigmoid(values)
            else:
                rows, t = b.mask.nonzero(as_tuple=True)
                value = values[rows, t]
            parts.append(pd.DataFrame({"batch": i, "row": rows.numpy(), "t": t.numpy(),
                                       "value": value.cpu().numpy(), "reward": b.reward[rows].cpu().numpy()}))
        return pd.concat(parts, ignore_index=True)

    return cached_table("critic-by-position", {"run": key, "batches": batches, "seed": seed}, compute,
                        code=[critic_by_position, final_state])


def critic_calibration(run, n_prompts: int = 128, n_samples: int = 32, seed: int = 0) -> pd.DataFrame:
    """A finished run's prompt critic against each prompt's pass rate under its final policy: for `n_prompts`
    held-out prompts, σ(V(x)) and `n_samples` responses sampled at the training temperature. One row per
    prompt: prompt, the length of its answer, predicted, right (responses answered correctly) and
    n_samples; right / n_samples estimates the pass rate p(x) with variance p(1 - p)/n_samples.
    run: a History or a run key of a run with adv='sppo'. Cached like a run. Book: ch. 8."""
    from xxpo_lab.policy import encode_prompts
    from xxpo_lab.rollout import sample, score
    from xxpo_lab.runs import cached_table, final_state

    key = run if isinstance(run, str) else run.attrs["key"]

    def compute() -> pd.DataFrame:
        state = final_state(key)
        if state.critic is None or state.critic.kind != "prompt":
            raise ValueError(f"run {key} has adv={state.cfg.adv!r}: calibration needs a prompt critic (adv='sppo')")
        cfg, tok = state.cfg, state.tokenizer
        problems = state.task.eval_set(n_prompts)
        gen = torch.Generator(device=state.device).manual_seed(seed)
        prompt_ids, prompt_mask = encode_prompts(tok, problems, state.device)
        with torch.no_grad():
            predicted = torch.sigmoid(state.critic(prompt_ids, prompt_mask, prompt_ids[:, :0]))  # [n_prompts]
        ids, mask = prompt_ids.repeat_interleave(n_samples, 0), prompt_mask.repeat_interleave(n_samples, 0)
        resp, _, _, lengths, truncated = sample(state.policy, ids, mask, cfg.T_max, cfg.temperature, gen,
                                                tok.eos_token_id, tok.pad_token_id)
        repeated = [p for p in problems for _ in range(n_samples)]
        right = score(state.task, tok, repeated, resp, lengths, truncated).view(n_prompts, n_samples).sum(-1)
        return pd.DataFrame({"prompt": [p.prompt for p in problems], "length": [len(p.solution) for p in problems],
                             "predicted": predicted.cpu().numpy(), "right": right.cpu().numpy(),
                             "n_samples": n_samples})

    return cached_table("critic-calibration", {"run": key, "n_prompts": n_prompts, "n_samples": n_samples,
                                               "seed": seed}, compute, code=[critic_calibration, final_state])


def measure_gradients(cfg: Config, seed: int = 0, critic_steps: int = 0, device: str | None = None) -> dict:
    """Gradient variance and SNR of `cfg`'s loss and advantage at the warm-start policy (no training).

    The policy is fixed; M = cfg.grad_stats_batches independent batches of P·G samples give the statistics (see
    `gradient_stats`). With a critic-based advantage, the critic is first fitted for `critic_steps`
    batches at the same fixed policy. Returns the grad/* metrics plus value/explained_var. Book: ch. 2.
    """
    cfg = resolve(sized(cfg))
    state = setup(cfg, pick_device(device))
    explained = fit_critic(state, critic_steps, seed + 1) if state.critic is not None and critic_steps else float("nan")
    return gradient_stats(state, seed) | {"value/explained_var": explained}


def gradient_table(configs: dict[str, Config], seed: int = 0, critic_steps: int = 0) -> pd.DataFrame:
    """`measure_gradients` of each labelled config at its warm start, in parallel and cached like a run: one row
    per label ('run') with the Config fields that vary between the configs and the grad/* metrics (and
    value/explained_var). Every config draws its batches from the same `seed`. Book: ch. 2."""
    from xxpo_lab.config import to_dict
    from xxpo_lab.runs import cached_table, parallel_map, varying_fields

    resolved = {label: to_dict(resolve(sized(c))) for label, c in configs.items()}
    varying = varying_fields(resolved)

    def compute() -> pd.DataFrame:
        jobs = [{"cfg": c, "seed": seed, "critic_steps": critic_steps} for c in configs.values()]
        results = parallel_map(measure_gradients, jobs, desc="gradient statistics")
        return pd.DataFrame([{"run": label} | {f: resolved[label][f] for f in varying} | r
                             for label, r in zip(configs, results)])

    payload = {"configs": resolved, "seed": seed, "critic_steps": critic_steps}
    return cached_table("gradients", payload, compute, code=[measure_gradients])


def score_norms(cfg: Config, n: int = 128, seed: int = 0, device: str | None = None) -> pd.DataFrame:
    """‖∇θ log π(y|x)‖² of n responses sampled from the warm-start policy, with their correctness.

    The variance of a REINFORCE-style gradient Σ_i (R_i - b) ∇log π(y_i|x) depends on these norms:
    the variance-minimising constant baseline is b* = E[R·‖s‖²] / E[‖s‖²]. When wrong responses have
    much larger score norms than right ones, b* is near the wrong answers' reward (0), not the mean
    reward. Returns one row per response: 'correct', 'score_norm2', 'length'. Book: ch. 2.
    """
    cfg = resolve(sized(cfg))
    state = setup(cfg, pick_device(device))
    rng, gen = random.Random(seed), torch.Generator(device=state.device).manual_seed(seed)
    rows = []
    while len(rows) < n:
        b, _ = collect(state, state.policy, 0, rng, gen, {})
        params = [p for p in state.policy.parameters() if p.requires_grad]
        for i in range(b.B):
            idx = torch.tensor([i], device=state.device)
            logp = token_logp(state.policy, b.prompt_ids[idx], b.prompt_mask[idx], b.resp_ids[idx], cfg.temperature)
            total = (logp * b.mask[idx]).sum()  # log π(y|x) of the whole response
            grads = torch.autograd.grad(total, params)
            rows.append({"correct": bool(b.correct[i]), "score_norm2": sum(g.pow(2).sum() for g in grads).item(),
                         "length": int(b.lengths[i])})
            if len(rows) == n:
                break
    return pd.DataFrame(rows)


def sample_batch(cfg: Config, seed: int = 0, device: str | None = None):
    """One prepared batch from the warm-start policy, exactly as training's first step sees it (responses,
    rewards, advantages, prox_logp), with the state it came from. Returns (state, batch). Book: ch. 0, 3."""
    cfg = resolve(sized(cfg))
    state = setup(cfg, pick_device(device))
    rng, gen = random.Random(seed), torch.Generator(device=state.device).manual_seed(seed)
    b, _ = collect(state, state.policy, 0, rng, gen, {})
    b.version_gap = torch.ones_like(b.version)
    prepare(state, b, {})
    return state, b


def reuse_one_batch(cfg: Config, seed: int = 0, device: str | None = None):
    """Sample one batch from the warm start and take cfg.epochs full-batch updates on it; returns (state,
    batch, [logp at the start of each update]) so that a chapter can show what the loss does to each token
    at update 0 and at update K-1 (`book.token_effects`). Book: ch. 1."""
    from xxpo_lab.loop import update

    state, b = sample_batch(cfg, seed, device)
    logps = []
    for _ in range(state.cfg.epochs):
        with torch.no_grad():
            logps.append(token_logp(state.policy, b.prompt_ids, b.prompt_mask, b.resp_ids, state.cfg.temperature))
        update(state, b, 0)
    return state, b, logps


def token_ratios(cfg: Config, seed: int = 0) -> pd.DataFrame:
    """The per-token log-ratios log r = log π_θ - log π_prox of one batch reused cfg.epochs times
    (`reuse_one_batch`): one row per (update, response, valid token) with the token's log π_prox, the
    response's length, advantage and correctness, so a chapter can set each response's token ratios beside
    its sequence ratio s_i = exp(mean_t log r), or find where the tokens a loss stops pushing are. Cached
    like a run. Book: ch. 5, 9."""
    from xxpo_lab.config import to_dict
    from xxpo_lab.runs import cached_table

    def compute() -> pd.DataFrame:
        state, b, logps = reuse_one_batch(cfg, seed)
        rows, t = b.mask.nonzero(as_tuple=True)  # the valid tokens, in row order
        parts = [pd.DataFrame({"update": u, "row": rows.numpy(), "t": t.numpy(),
                               "log_r": (logp - b.prox_logp)[rows, t].numpy(),
                               "prox_logp": b.prox_logp[rows, t].numpy(),
                               "length": b.lengths[rows].numpy(), "adv": b.adv[rows, t].numpy(),
                               "correct": b.correct[rows].numpy()})
                 for u, logp in enumerate(logps)]
        return pd.concat(parts, ignore_index=True)

    return cached_table("token-ratios", {"config": to_dict(cfg), "seed": seed}, compute,
                        code=[token_ratios, reuse_one_batch])


def noise_effect(cfg: Config, sigmas: list[float], rhos: list[float], losses: dict[str, dict], seed: int = 0,
                 draws: int = 4) -> pd.DataFrame:
    """How noise in the sampler's log-probs bends the first update of a step, for several losses.

    One batch from the warm start (`sample_batch`); for each loss (label -> Config changes, e.g.
    {"loss": "gspo"}), its gradient with the exact behav_logp = prox_logp, and again with `draws` draws of
    `rollout.logp_noise(σ, ρ)` added to both (a sampler that disagrees with the trainer: r = exp(-noise)
    at update 0). One row per (loss, σ, ρ, draw): the cosine between the noisy and the exact gradient (1:
    the noise changed nothing) and the shares of tokens and of sequences the noise got clipped. Cached like
    a run. Book: ch. 5."""
    from xxpo_lab.config import to_dict
    from xxpo_lab.rollout import logp_noise
    from xxpo_lab.runs import cached_table

    def compute() -> pd.DataFrame:
        state, b = sample_batch(cfg, seed)
        params = [p for p in state.policy.parameters() if p.requires_grad]
        logp = token_logp(state.policy, b.prompt_ids, b.prompt_mask, b.resp_ids, state.cfg.temperature)
        gen = torch.Generator(device=state.device).manual_seed(seed)
        rows = []
        for label, changes in losses.items():
            lcfg = resolve(replace(sized(cfg), **changes))  # the loss's own defaults (GSPO's tiny eps)
            exact, _, _ = _loss_grad(logp, b, lcfg, params)
            for sigma in sigmas:
                for rho in rhos:
                    for draw in range(draws):
                        noise = logp_noise(b.mask, sigma, rho, gen)
                        noisy = replace(b, behav_logp=b.behav_logp + noise, prox_logp=b.prox_logp + noise)
                        g, tok, seq = _loss_grad(logp, noisy, lcfg, params)
                        cos = torch.nn.functional.cosine_similarity(g, exact, dim=0).item()
                        rows.append({"loss": label, "sigma": sigma, "rho": rho, "draw": draw, "cosine": cos,
                                     "clip_token_frac": tok, "clip_seq_frac": seq,
                                     "len_mean": b.lengths.float().mean().item()})
        return pd.DataFrame(rows)

    payload = {"config": to_dict(cfg), "sigmas": list(sigmas), "rhos": list(rhos), "losses": losses, "seed": seed,
               "draws": draws}
    return cached_table("noise-effect", payload, compute, code=[noise_effect, sample_batch, _loss_grad])


def _loss_grad(logp, b, cfg: Config, params) -> tuple[torch.Tensor, float, float]:
    """The loss's flattened gradient over `params` (the graph of logp is kept for the next call), and the
    shares of valid tokens and of sequences its clip zeroed."""
    loss, info = loss_of(cfg.loss, logp, b, cfg)
    g = torch.cat([x.reshape(-1) for x in torch.autograd.grad(loss, params, retain_graph=True)])
    clipped = (info.clip_low | info.clip_high) & (b.mask > 0)
    return g, (clipped.sum() / b.mask.sum()).item(), clipped.any(-1).float().mean().item()


def stale_tokens(cfg: Config, seed: int = 0, at_step: int = 10) -> pd.DataFrame:
    """The three policies of one stale batch, per token: train cfg (with its staleness d) for `at_step` steps,
    then sample step `at_step`'s batch with the policy of d steps ago (π_behav), recompute the policy at the
    start of the step (π_prox) and take the step's updates (π_θ after them). One row per valid token: row,
    position t, token text, advantage, correctness, and behav_logp, prox_logp, logp. log w = prox - behav is
    what staleness did, log u = logp - prox what this step did, their sum the coupled log-ratio. Cached like a
    run. Book: ch. 6."""
    from xxpo_lab.batch import group_rows
    from xxpo_lab.config import to_dict
    from xxpo_lab.loop import behaviour_policy, update
    from xxpo_lab.runs import cached_table

    def compute() -> pd.DataFrame:
        state = trained_state(cfg, seed, at_step)
        run_cfg = state.cfg
        version, behav = behaviour_policy(state, at_step)
        b, _ = collect(state, behav, version, state.rng, state.gen, {})
        b.version_gap = at_step + 1 - b.version
        prepare(state, b, {}, recompute_prox=True)
        for _ in range(run_cfg.epochs):  # the step's updates, as training takes them
            for idx in group_rows(run_cfg.P, run_cfg.G, run_cfg.minibatches, state.gen_perm):
                update(state, b.rows(idx), at_step)
        with torch.no_grad():
            logp = token_logp(state.policy, b.prompt_ids, b.prompt_mask, b.resp_ids, run_cfg.temperature)
        rows, t = b.mask.nonzero(as_tuple=True)
        tok = state.tokenizer
        text = ["⏎" if i == tok.eos_token_id else tok.decode([i]) for i in b.resp_ids[rows, t].tolist()]
        return pd.DataFrame({"row": rows.numpy(), "t": t.numpy(), "token": text, "adv": b.adv[rows, t].numpy(),
                             "correct": b.correct[rows].numpy(), "behav_logp": b.behav_logp[rows, t].numpy(),
                             "prox_logp": b.prox_logp[rows, t].numpy(), "logp": logp[rows, t].numpy()})

    return cached_table("stale-tokens", {"config": to_dict(cfg), "seed": seed, "at_step": at_step}, compute,
                        code=[stale_tokens, trained_state])


# -------------------------------------------------------------------------------------------------
# SAPO (ch. 9)


def entropy_by_sign(cfg: Config, seed: int = 0, batches: int = 4) -> pd.DataFrame:
    """How an update on tokens of one advantage sign moves the policy's entropy, at the warm start.

    For `batches` fresh batches: H = the mean next-token entropy over the batch's sampled positions, and
    for the loss cfg.loss restricted to the tokens with A > 0, then to those with A < 0, the change of H
    after one optimizer step on it (a fresh AdamW at cfg.lr, gradient clipped at cfg.max_grad_norm, as the
    first update of a run takes it). SAPO's reason for tau_neg > tau_pos (arXiv 2511.20347): pushing a
    sampled token down raises every other logit, a diffuse update that raises entropy. One row per batch
    and sign: batch, sign ('A > 0' or 'A < 0'), entropy, tokens (in the restricted loss), dH (nats).
    Cached like a run. Book: ch. 9."""
    import copy

    from xxpo_lab.config import to_dict
    from xxpo_lab.runs import cached_table

    def compute() -> pd.DataFrame:
        state = setup(resolve(sized(cfg)), pick_device())
        run_cfg = state.cfg
        rng, gen = random.Random(seed), torch.Generator(device=state.device).manual_seed(seed)
        rows = []
        for i in range(batches):
            b, _ = collect(state, state.policy, 0, rng, gen, {})
            b.version_gap = torch.ones_like(b.version)
            prepare(state, b, {}, recompute_prox=False)
            H = mean_entropy(state.policy, b, run_cfg.temperature)
            for sign, name in ((1.0, "A > 0"), (-1.0, "A < 0")):
                keep = ((b.adv * sign > 0) & (b.mask > 0)).to(b.mask.dtype)  # [B, T]
                policy = copy.deepcopy(state.policy)
                opt = torch.optim.AdamW(policy.parameters(), lr=run_cfg.lr, weight_decay=run_cfg.weight_decay)
                logp = token_logp(policy, b.prompt_ids, b.prompt_mask, b.resp_ids, run_cfg.temperature)
                loss, _ = loss_of(run_cfg.loss, logp, replace(b, mask=keep), run_cfg)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(policy.parameters(), run_cfg.max_grad_norm)
                opt.step()
                rows.append({"batch": i, "sign": name, "entropy": H, "tokens": int(keep.sum()),
                             "dH": mean_entropy(policy, b, run_cfg.temperature) - H})
        return pd.DataFrame(rows)

    return cached_table("entropy-by-sign", {"config": to_dict(cfg), "seed": seed, "batches": batches}, compute,
                        code=[entropy_by_sign, mean_entropy])


@torch.no_grad()
def mean_entropy(policy, b, temperature: float) -> float:
    """The policy's mean next-token entropy (nats) over the sampled positions of batch b."""
    _, entropy = token_logp(policy, b.prompt_ids, b.prompt_mask, b.resp_ids, temperature, with_entropy=True)
    return ((entropy * b.mask).sum() / b.mask.sum()).item()


def sampler_gap(source, seed: int = 0, n_prompts: int = 64, **sampler) -> pd.DataFrame:
    """The sampler's and the trainer's log-probs of the same sampled tokens, one row per token.

    source: a Config (its warm start) or a finished run (a History or a run key: its final policy).
    `sampler`: the sampler's settings (sampler_dtype, top_p, top_k), replacing the source's. The sampler
    draws G responses to each of `n_prompts` training prompts with its own seeded randomness and records
    its log-probs, as in training; the float32 trainer scores the same tokens. Columns: response, t,
    length, correct, logp_sampler, logp_trainer, p_trainer, gap = logp_trainer - logp_sampler.
    Book: ch. 10.
    """
    from xxpo_lab.loop import behaviour_policy
    from xxpo_lab.mismatch import sampler_copy
    from xxpo_lab.runs import final_state

    if isinstance(source, Config):
        state = setup(resolve(sized(replace(source, seed=seed))), pick_device())
    else:
        state = final_state(source)
    state.cfg = cfg = replace(state.cfg, P=n_prompts, minibatches=1, staleness=0, dynamic_sampling=False, **sampler)
    state.sampler = sampler_copy(state.policy, cfg.sampler_dtype) if cfg.sampler_dtype != "float32" else None
    version, behav = behaviour_policy(state, 0)
    gen = torch.Generator(device=state.device).manual_seed(seed)
    b, _ = collect(state, behav, version, random.Random(seed), gen, {})
    with torch.no_grad():
        trainer = token_logp(state.policy, b.prompt_ids, b.prompt_mask, b.resp_ids, cfg.temperature)
    row, t = (b.mask > 0).nonzero(as_tuple=True)
    return pd.DataFrame({"response": row.cpu().numpy(), "t": t.cpu().numpy(),
                         "length": b.lengths[row].cpu().numpy(), "correct": b.correct[row].cpu().numpy(),
                         "logp_sampler": b.behav_logp[row, t].cpu().numpy(),
                         "logp_trainer": trainer[row, t].cpu().numpy(),
                         "p_trainer": trainer[row, t].exp().cpu().numpy(),
                         "gap": (trainer - b.behav_logp)[row, t].cpu().numpy()})
