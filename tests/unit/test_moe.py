"""Mixture-of-experts policies: the sampler runs them, routes are recorded, Routing Replay forces the recorded
experts through the model's own router, and route drift counts what a gradient step changed. Book: ch. 5."""

import random
from dataclasses import replace

import pytest
import torch

from xxpo_lab import Config
from xxpo_lab.moe import moe_blocks, route_drift, routing
from xxpo_lab.policy import build_policy, encode_prompts, token_logp
from xxpo_lab.rollout import sample
from xxpo_lab.runs import train
from xxpo_lab.tasks import char_tokenizer, make_task

MOE = Config(model_type="mixtral", n_layer=2, n_head=2, n_embd=32, n_experts=4, top_k_experts=2)


@pytest.fixture(scope="module")
def setup():
    tok = char_tokenizer()
    model = build_policy(MOE, tok)
    problems = make_task("reverse", 6).sample(16, random.Random(0))
    prompt_ids, prompt_mask = encode_prompts(tok, problems, "cpu")
    gen = torch.Generator().manual_seed(0)
    resp, mask, behav_logp, _, _ = sample(model, prompt_ids, prompt_mask, 8, 1.0, gen, tok.eos_token_id,
                                          tok.pad_token_id)
    return tok, model, prompt_ids, prompt_mask, resp, mask, behav_logp


def test_the_sampler_runs_a_mixtral_policy_and_the_learner_agrees_with_it(setup):
    tok, model, prompt_ids, prompt_mask, resp, mask, behav_logp = setup
    assert type(model).__name__ == "MixtralForCausalLM" and len(moe_blocks(model)) == 2
    logp = token_logp(model, prompt_ids, prompt_mask, resp, 1.0)
    assert torch.allclose(logp * mask, behav_logp, atol=1e-5), (logp * mask - behav_logp).abs().max()


def test_routes_are_recorded_per_row_layer_position_and_expert_slot(setup):
    tok, model, prompt_ids, prompt_mask, resp, mask, _ = setup
    with routing(model) as chosen:
        token_logp(model, prompt_ids, prompt_mask, resp, 1.0)
    (routes,) = chosen
    assert routes.shape == (16, 2, prompt_ids.shape[1] + resp.shape[1], 2)
    assert routes.min() >= 0 and routes.max() <= 3
    assert (routes[..., 0] != routes[..., 1]).all()  # two different experts per token
    with routing(model) as again:  # a row's routes do not depend on the other rows of the forward
        token_logp(model, prompt_ids[:4], prompt_mask[:4], resp[:4], 1.0)
    assert torch.equal(again[0], routes[:4])


def test_a_dense_model_records_nothing():
    model = build_policy(Config(n_layer=1, n_head=2, n_embd=16), char_tokenizer())
    assert moe_blocks(model) == []
    with routing(model) as chosen:
        model(input_ids=torch.zeros(1, 3, dtype=torch.long))
    assert chosen == []


def test_replay_forces_the_recorded_experts_weighted_by_the_current_router(setup):
    tok, model, prompt_ids, prompt_mask, resp, mask, _ = setup
    with routing(model) as before:
        logp_before = token_logp(model, prompt_ids, prompt_mask, resp, 1.0)
    with routing(model, replay=before[0]) as same:  # replaying the routes of the same weights changes nothing
        torch.testing.assert_close(token_logp(model, prompt_ids, prompt_mask, resp, 1.0), logp_before)
    assert torch.equal(same[0], before[0])

    moved = build_policy(MOE, tok)
    moved.load_state_dict(model.state_dict())
    gate = moe_blocks(moved)[0].gate
    with torch.no_grad():
        gate.weight.add_(torch.randn(gate.weight.shape, generator=torch.Generator().manual_seed(1)))
    seen = []
    hook = moe_blocks(moved)[0].experts.register_forward_pre_hook(lambda m, args: seen.append(args[1:]))
    with routing(moved, replay=before[0]) as now:
        logp = token_logp(moved, prompt_ids, prompt_mask, resp, 1.0)
    with routing(moved) as free:
        logp_free = token_logp(moved, prompt_ids, prompt_mask, resp, 1.0)
    hook.remove()
    (index, weights), _ = seen
    assert torch.equal(index, before[0][:, 0].reshape(index.shape))  # the experts used are the replayed ones
    # layer 0 sees the same input either way: what its router would pick now is recorded, and it moved
    assert torch.equal(now[0][:, 0], free[0][:, 0]) and not torch.equal(now[0][:, 0], before[0][:, 0])
    hidden = weights.sum(-1)
    torch.testing.assert_close(hidden, torch.ones_like(hidden))  # Mixtral's renormalised top-k weights
    assert not torch.allclose(logp, logp_free)
    (grad,) = torch.autograd.grad((logp * mask).sum(), gate.weight)
    assert grad.abs().sum() > 0  # under replay the router still learns how to weight its experts


def test_route_drift_counts_changed_expert_sets_on_the_positions_that_predict_response_tokens():
    # L = 1, T = 3: positions 0, 1, 2 predict resp_0, resp_1, resp_2; position 3 (the last token) predicts nothing.
    before = torch.tensor([[0, 1], [0, 1], [0, 1], [0, 1]]).expand(1, 2, 4, 2).clone()  # [B=1, layers, L+T, k]
    now = before.clone()
    now[0, 0, 0] = torch.tensor([1, 0])  # the same set in another order: not a change
    now[0, 0, 1] = torch.tensor([0, 2])  # changed, counted
    now[0, 1, 2] = torch.tensor([2, 3])  # changed, but resp_2 is padding
    now[0, 1, 3] = torch.tensor([2, 3])  # changed, but position 3 predicts no response token
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    assert route_drift(now, before, mask).item() == pytest.approx(1 / 4)  # 1 of 2 layers x 2 tokens


def test_a_moe_run_logs_route_drift_zero_at_the_first_update_and_replays_on_request(tiny):
    cfg = replace(tiny, model_type="mixtral", n_experts=4, steps=3, epochs=2, minibatches=2, lr=1e-2)
    for replay in (False, True):
        hist = train(replace(cfg, routing_replay=replay), cache=False, progress=False)
        steps = hist[hist.step < cfg.steps]
        assert (steps["moe/route_drift@u0"] == 0).all()  # update 0 runs the weights that sampled the batch
        assert steps["moe/route_drift@u3"].max() > 0  # a high lr moves some routes within the step
    dense = train(tiny, cache=False, progress=False)
    assert "moe/route_drift" not in dense
