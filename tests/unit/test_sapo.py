"""SAPO measured (ch. 9): the entropy change of one update on the tokens of one advantage sign, and the
token table that locates the tokens a loss stops pushing."""

import copy
from dataclasses import replace

import pytest
import torch

from xxpo_lab.loop import loss_of
from xxpo_lab.measure import entropy_by_sign, mean_entropy, sample_batch, token_ratios
from xxpo_lab.policy import token_logp


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_entropy_change_is_one_adamw_step_on_the_tokens_of_one_sign(tiny, sign):
    cfg = replace(tiny, loss="sapo", P=8)
    table = entropy_by_sign(cfg, seed=3, batches=2)
    assert list(table["sign"]) == ["A > 0", "A < 0"] * 2 and list(table["batch"]) == [0, 0, 1, 1]
    row = table[table["sign"] == ("A > 0" if sign > 0 else "A < 0")].iloc[0]
    state, b = sample_batch(cfg, seed=3)  # the same first batch: same seeds, same warm start
    H = mean_entropy(state.policy, b, 1.0)
    assert row["entropy"] == pytest.approx(H, rel=1e-6)
    keep = ((b.adv * sign > 0) & (b.mask > 0)).to(b.mask.dtype)
    assert row["tokens"] == int(keep.sum()) > 0
    # the step, taken here by hand: only the tokens of one sign are in the loss
    policy = copy.deepcopy(state.policy)
    opt = torch.optim.AdamW(policy.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    logp = token_logp(policy, b.prompt_ids, b.prompt_mask, b.resp_ids, 1.0)
    loss_of("sapo", logp, replace(b, mask=keep), state.cfg)[0].backward()
    torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.max_grad_norm)
    opt.step()
    assert row["dH"] == pytest.approx(mean_entropy(policy, b, 1.0) - H, rel=1e-4, abs=1e-6)
    assert row["dH"] != 0


def test_token_ratios_carry_the_anchor_log_probs(tiny):
    table = token_ratios(replace(tiny, loss="sapo", epochs=2), seed=0)
    assert (table["prox_logp"] <= 0).all()
    first = table[table["update"] == 0]
    assert first["log_r"].abs().max() < 1e-5  # update 0 is on-policy: r = 1 on every token
