"""The sampler: EOS and masks, truncation, determinism, and log-prob parity with the learner."""

import random

import pytest
import torch

from xxpo_lab import Config
from xxpo_lab.policy import build_policy, encode_prompts, token_logp
from xxpo_lab.rollout import decode, sample
from xxpo_lab.tasks import char_tokenizer, make_task


@pytest.fixture(scope="module")
def setup():
    tok = char_tokenizer()
    model = build_policy(Config(n_layer=2, n_head=2, n_embd=32), tok)
    task = make_task("reverse", 6)  # prompts of different lengths: left padding is exercised
    problems = task.sample(64, random.Random(0))
    prompt_ids, prompt_mask = encode_prompts(tok, problems, "cpu")
    assert (prompt_mask == 0).any()
    return tok, model, prompt_ids, prompt_mask


def _sample(setup, T=12, temperature=1.0, seed=0):
    tok, model, prompt_ids, prompt_mask = setup
    gen = torch.Generator().manual_seed(seed)
    return sample(model, prompt_ids, prompt_mask, T, temperature, gen, tok.eos_token_id, tok.pad_token_id)


def test_eos_mask_and_padding(setup):
    tok = setup[0]
    resp, mask, logp, lengths, truncated = _sample(setup)
    assert resp.shape == mask.shape == logp.shape == (64, 12)
    for row, m, n, tr in zip(resp, mask, lengths, truncated):
        eos = (row == tok.eos_token_id).nonzero()
        if tr:
            assert n == 12 and len(eos) == 0 and m.all()
        else:
            first = eos[0].item()
            assert n == first + 1  # EOS counts: stopping is an action
            assert m[:n].all() and not m[n:].any()
            assert (row[n:] == tok.pad_token_id).all()
    assert (logp[mask == 0] == 0).all() and (logp[mask == 1] < 0).all()
    assert truncated.any() and (~truncated).any()  # a random policy does both


def test_learner_logp_matches_sampler(setup):
    tok, model, prompt_ids, prompt_mask = setup
    for temperature in (1.0, 0.7):
        resp, mask, behav_logp, _, _ = _sample(setup, temperature=temperature)
        logp = token_logp(model, prompt_ids, prompt_mask, resp, temperature)
        assert torch.allclose(logp * mask, behav_logp, atol=1e-5), (logp * mask - behav_logp).abs().max()


def test_a_temperature_mismatch_is_caught(setup):
    tok, model, prompt_ids, prompt_mask = setup
    resp, mask, behav_logp, _, _ = _sample(setup, temperature=1.0)
    logp = token_logp(model, prompt_ids, prompt_mask, resp, 0.7)
    assert (logp * mask - behav_logp).abs().max() > 1e-2


def test_sampling_is_deterministic_for_a_generator_seed(setup):
    a, b, c = _sample(setup, seed=3), _sample(setup, seed=3), _sample(setup, seed=4)
    assert torch.equal(a[0], b[0]) and torch.equal(a[2], b[2])
    assert not torch.equal(a[0], c[0])


def test_decode_drops_eos(setup):
    tok = setup[0]
    resp = torch.tensor([[2 + 10, 2 + 11, 1, 0], [2 + 12, 2 + 12, 2 + 12, 2 + 12]])
    texts = decode(tok, resp, torch.tensor([3, 4]), torch.tensor([False, True]))
    assert texts == [tok.decode([12, 13]), tok.decode([14, 14, 14, 14])]


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_lean_gpt2_decoder_samples_what_transformers_samples(setup, temperature):
    lean = _sample(setup, temperature=temperature, seed=5)
    tok, model, prompt_ids, prompt_mask = setup
    hf = sample(model, prompt_ids, prompt_mask, 12, temperature, torch.Generator().manual_seed(5), tok.eos_token_id,
                tok.pad_token_id, lean=False)
    assert torch.equal(lean[0], hf[0]) and torch.equal(lean[1], hf[1])
    assert (lean[2] - hf[2]).abs().max() < 1e-5


def test_score_before_the_cut_reads_the_answer_a_truncation_cut_off():
    """A truncated response scores 0; read before the cut, its answer may be right (DAPO's reward noise)."""
    from xxpo_lab.rollout import score
    from xxpo_lab.tasks import char_tokenizer, make_task

    task, tok = make_task("reverse", 3), char_tokenizer()
    problem = task.sample(1, random.Random(0))[0]
    texts = [problem.solution + "...", "x" + problem.solution[1:] + "..."]  # right then cut; wrong then cut
    ids = torch.tensor([tok.encode(t) for t in texts])
    lengths, truncated = torch.tensor([ids.shape[1]] * 2), torch.tensor([True, True])
    assert score(task, tok, [problem] * 2, ids, lengths, truncated).tolist() == [False, False]
    assert score(task, tok, [problem] * 2, ids, lengths, truncated, before_cut=True).tolist() == [True, False]


@pytest.mark.parametrize("rho", [0.0, 0.9])
def test_logp_noise_has_std_sigma_neighbour_correlation_rho_and_spares_padding(rho):
    from xxpo_lab.rollout import logp_noise

    mask = torch.ones(20_000, 16)
    mask[0, 8:] = 0.0
    n = logp_noise(mask, 0.1, rho, torch.Generator().manual_seed(0))
    assert (n[0, 8:] == 0).all()
    n = n[1:]
    assert n.std().item() == pytest.approx(0.1, rel=0.03)
    assert n[:, -1].std().item() == pytest.approx(0.1, rel=0.03)  # stationary: the last token as spread as the first
    corr = torch.corrcoef(torch.stack([n[:, 7], n[:, 8]]))[0, 1].item()
    assert corr == pytest.approx(rho, abs=0.03)
    # the mean over a response, what a sequence ratio sees: σ/√16 = 0.025 when i.i.d., near σ when correlated
    expected = 0.025 if rho == 0 else 0.1 * ((16 + 2 * sum((16 - k) * rho**k for k in range(1, 16))) / 256) ** 0.5
    assert n.mean(-1).std().item() == pytest.approx(expected, rel=0.05)
