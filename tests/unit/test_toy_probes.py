"""Chapter 3's instruments: the conditional-length probes (golden values on a hand-built next-token
table), the model-free mechanism (token weights, advantage mass) and the two-stage toy policy."""

import math
import random
from types import SimpleNamespace

import pandas as pd
import pytest
import torch

from xxpo_lab.probes import (
    dot_probs,
    eos_after_filler,
    expected_filler,
    filler_distribution,
    paired_probe,
    windowed_lengths,
)
from xxpo_lab.tasks import EOS, FILLER, Problem, char_tokenizer, make_task
from xxpo_lab.toy import difficulty_bias, group_advantage_mass, token_weights, train_toy

# -------------------------------------------------------------------------------------------------
# pure reductions


def test_filler_distribution_and_expectation_golden():
    # row 0: p = 1/2 at every step, budget 3: P(N>=1,2,3) = 1/2, 1/4, 1/8 -> E[N] = 0.875;
    #        P(N=0..3) = 1/2, 1/4, 1/8, 1/8 (the last: all three dots, the budget ran out)
    # row 1: p = 0.8, 0.5, then the budget ends (0): P(N>=1,2) = 0.8, 0.4 -> E[N] = 1.2;
    #        P(N=0..3) = 0.2, 0.8*0.5 = 0.4, 0.4*1 = 0.4, 0
    p_dot = torch.tensor([[0.5, 0.5, 0.5], [0.8, 0.5, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(expected_filler(p_dot), torch.tensor([0.875, 1.2], dtype=torch.float64))
    dist = filler_distribution(p_dot)
    torch.testing.assert_close(dist, torch.tensor([[0.5, 0.25, 0.125, 0.125], [0.2, 0.4, 0.4, 0.0]],
                                                  dtype=torch.float64))
    torch.testing.assert_close((dist * torch.arange(4)).sum(-1), expected_filler(p_dot))  # E[N] both ways


def test_eos_after_filler_golden():
    # P(N>=0,1,2) = 1, 0.5, 0.25; EOS at k = 0, 1, 2 with 0.4, 0.5, 0 -> 0.4 + 0.25 + 0 = 0.65
    p_dot = torch.tensor([[0.5, 0.5, 0.0]])
    p_eos = torch.tensor([[0.4, 0.5, 0.0]])
    torch.testing.assert_close(eos_after_filler(p_dot, p_eos), torch.tensor([0.65]))


# -------------------------------------------------------------------------------------------------
# a hand-built next-token table: the probes on a "model" whose answers we know


class Bigram(torch.nn.Module):
    """Next-token distribution that depends only on the current token (explicit probabilities).

    After '>' the answer starts 'a' (0.8) or 'b' (0.2); 'a' -> 'c' and 'b' -> 'd'; so the answers are
    "ac" or "bd". After 'c', a dot 0.5 / EOS 0.5; after 'd', a dot 0.8 / EOS 0.2 (it "knows" it erred);
    after '.', a dot 0.5 / EOS 0.5. Every other row puts all mass on EOS.
    """

    def __init__(self, tok):
        super().__init__()
        V, ids = len(tok), tok.convert_tokens_to_ids
        probs = torch.zeros(V, V)
        probs[:, tok.eos_token_id] = 1.0
        table = {">": {"a": 0.8, "b": 0.2}, "a": {"c": 1.0}, "b": {"d": 1.0}, "c": {FILLER: 0.5, EOS: 0.5},
                 "d": {FILLER: 0.8, EOS: 0.2}, FILLER: {FILLER: 0.5, EOS: 0.5}}
        for cur, nxt in table.items():
            probs[ids(cur)] = 0.0
            for token, p in nxt.items():
                probs[ids(cur), ids(token)] = p
        self.logits = torch.nn.Parameter(torch.log(probs.clamp(min=1e-30)), requires_grad=False)

    def forward(self, input_ids, cache=None, attention_mask=None, position_ids=None, use_cache=False):
        return SimpleNamespace(logits=self.logits[input_ids])  # [B, L, V]


@pytest.fixture(scope="module")
def bigram():
    tok = char_tokenizer()
    return Bigram(tok), tok


def test_dot_probs_and_expected_filler_on_a_hand_built_table(bigram):
    model, tok = bigram
    # prompts of different lengths: the left padding and the shift by one are exercised
    problems = [Problem("ac>", "ac"), Problem("eeac>", "ac"), Problem("ac>", "ac")]
    p_dot, p_eos = dot_probs(model, tok, problems, ["ac", "ac", "bd"], T_max=6, temperature=1.0)
    # budget K = 6 - 2 = 4: after "ac" p = 0.5, 0.5, 0.5, 0.5; after "bd" p = 0.8, 0.5, 0.5, 0.5; then 0
    expected = torch.tensor([[0.5] * 4 + [0.0] * 2, [0.5] * 4 + [0.0] * 2, [0.8] + [0.5] * 3 + [0.0] * 2])
    torch.testing.assert_close(p_dot, expected)
    torch.testing.assert_close(p_eos, torch.tensor([[0.5] * 4 + [0.0] * 2] * 2 + [[0.2] + [0.5] * 3 + [0.0] * 2]))
    # E[N | ac] = .5 + .25 + .125 + .0625 = 0.9375;  E[N | bd] = .8 + .4 + .2 + .1 = 1.5
    torch.testing.assert_close(expected_filler(p_dot), torch.tensor([0.9375, 0.9375, 1.5]))


def test_dot_probs_divides_by_the_temperature(bigram):
    model, tok = bigram
    p_dot, p_eos = dot_probs(model, tok, [Problem("ac>", "ac")], ["bd"], T_max=4, temperature=2.0)
    # after 'd': logits log .8, log .2 -> at T = 2, sqrt(.8) : sqrt(.2) = 2 : 1 -> p_dot = 2/3
    torch.testing.assert_close(p_dot[0, :2], torch.tensor([2 / 3, 0.5]))


def test_paired_probe_on_the_model_s_own_answers(bigram):
    model, tok = bigram
    task = make_task("copy", 2)
    problems = [Problem("ac>", "ac")] * 20
    out = paired_probe(model, tok, task, problems, G=8, T_max=6, temperature=1.0,
                       gen=torch.Generator().manual_seed(0))
    # the model answers "ac" (right) or "bd" (wrong); whatever it sampled, c = 0.9375 and w = 1.5 exactly.
    # A prompt is used unless its 8 samples agree: P = 0.8^8 + 0.2^8 = 0.17, so most are used.
    assert 0.5 < out["prompts_used"] <= 1.0 and out["other_wrong_frac"] == 0.0
    assert out["correct"] == pytest.approx(0.9375) and out["wrong"] == pytest.approx(1.5)
    assert out["gap"] == pytest.approx(0.5625) and out["gap_se"] == pytest.approx(0.0, abs=1e-6)


def test_windowed_lengths_weights_by_sample_counts():
    # window 0-1: step 0 has 2 right of 4 (len 3) and 2 wrong (len 5); step 1 has 4 right (len 4), 0 wrong
    # L_c = (2*3 + 4*4) / 6 = 22/6, L_w = (2*5) / 2 = 5; the last row (final eval only) is ignored
    hist = pd.DataFrame({"step": [0, 1, 2], "reward/correct_frac": [0.5, 1.0, float("nan")],
                         "len/correct_mean": [3.0, 4.0, float("nan")],
                         "len/incorrect_mean": [5.0, float("nan"), float("nan")]})
    w = windowed_lengths(hist, [0, 2], batch_size=4).iloc[0]
    assert w["len_correct"] == pytest.approx(22 / 6) and w["len_incorrect"] == pytest.approx(5.0)
    assert w["gap"] == pytest.approx(5.0 - 22 / 6) and w["accuracy"] == pytest.approx(0.75)


# -------------------------------------------------------------------------------------------------
# the mechanism, model-free


def test_token_weights_of_each_aggregation():
    # B = 6 sequences of lengths 2, 4, 8 with A = +1 and A = -1; T_max = 16, sum of lengths = 28
    lengths = torch.tensor([2, 4, 8, 2, 4, 8])
    adv = torch.tensor([1.0, 1.0, 1.0, -1.0, -1.0, -1.0])
    sign = adv.double()
    # grpo: A / (B |y|) = 1/12, 1/24, 1/48
    torch.testing.assert_close(token_weights("grpo", lengths, adv, 16), sign / (6 * lengths.double()))
    # dr_grpo: A / (B T_max) = 1/96 for every token
    torch.testing.assert_close(token_weights("dr_grpo", lengths, adv, 16), sign / 96)
    # bnpo: A / sum |y| = 1/28 for every token
    torch.testing.assert_close(token_weights("bnpo", lengths, adv, 16), sign / 28)


def test_group_advantage_mass_golden():
    # k right of 8: centred sum |A| = 2k(8-k)/8; z-scored divides by std = sqrt(k(8-k)/56) (unbiased)
    rewards = torch.tensor([[1.0] * k + [0.0] * (8 - k) for k in (0, 1, 4, 7, 8)])
    centred = group_advantage_mass(rewards, "dr_grpo")
    torch.testing.assert_close(centred, torch.tensor([0.0, 1.75, 4.0, 1.75, 0.0], dtype=torch.float64))
    z = group_advantage_mass(rewards, "grpo", adv_eps=1e-12)  # Config needs eps > 0
    # k = 1: 1.75 / sqrt(7/56) = 1.75 * sqrt(8) = 4.9497; k = 4: 4 / sqrt(16/56) = 7.4833; all-equal groups: 0
    expected = torch.tensor([0.0, 1.75 * math.sqrt(8), 4 / math.sqrt(16 / 56), 1.75 * math.sqrt(8), 0.0],
                            dtype=torch.float64)
    torch.testing.assert_close(z.nan_to_num(0.0), expected)
    table = difficulty_bias(8, pd.Series(0.2, index=[0, 1, 4, 7, 8]))  # one group of each, as above
    assert table["share_centred"].sum() == pytest.approx(1.0) and table["share_zscore"].sum() == pytest.approx(1.0)
    # 1/8 and 7/8 groups carry 3.5/7.5 of the centred mass but 9.90/17.38 of the z-scored mass
    assert table.loc[[1, 7], "share_centred"].sum() == pytest.approx(3.5 / 7.5)
    assert table.loc[[1, 7], "share_zscore"].sum() == pytest.approx(2 * 4.9497 / (2 * 4.9497 + 7.4833), abs=1e-4)
    # relative to 4 of 8: 1.75 / 4 mean-centred, 4.9497 / 7.4833 z-scored
    assert table.loc[1, "rel_centred"] == pytest.approx(1.75 / 4)
    assert table.loc[1, "rel_zscore"] == pytest.approx(4.9497 / 7.4833, abs=1e-4)


# -------------------------------------------------------------------------------------------------
# the two-stage toy policy


def test_toy_knows_drifts_under_grpo_not_under_dr_grpo():
    # start: P(continue) = p = σ(-1) at each of 15 positions -> E[filler] = Σ_{k=1..15} p^k
    # = p(1 - p^15)/(1 - p) = e^-1 (1 - p^15) = 0.36788, after either answer
    grpo = train_toy("grpo", knows=True, steps=150, seed=0)
    dr = train_toy("dr_grpo", knows=True, steps=150, seed=0)
    assert grpo["fill_wrong"].iloc[0] == pytest.approx(math.exp(-1) * (1 - torch.sigmoid(torch.tensor(-1.0)).item() ** 15))
    assert grpo["fill_wrong"].iloc[-1] > 2.0 and grpo["fill_right"].iloc[-1] < 0.2  # long when wrong, short when right
    assert dr["fill_wrong"].iloc[-1] < 1.0 and dr["fill_right"].iloc[-1] < 1.0
    assert grpo["accuracy"].iloc[-20:].mean() > 0.9 and dr["accuracy"].iloc[-20:].mean() > 0.9  # same accuracy


def test_toy_drift_is_not_an_adam_artefact():
    # plain SGD, P(right) frozen at 1/2 so wrong samples never run out; lr per loss (their scales differ)
    grpo = train_toy("grpo", knows=True, steps=150, seed=0, optimizer="sgd", lr=2.0, train_answer=False)
    dr = train_toy("dr_grpo", knows=True, steps=150, seed=0, optimizer="sgd", lr=16.0, train_answer=False)
    assert grpo["p_right"].eq(0.5).all() and grpo["fill_wrong"].iloc[-1] > 1.0
    assert dr["fill_wrong"].iloc[-1] < 0.6


def test_toy_cannot_tell_does_not_drift_under_grpo():
    shared = train_toy("grpo", knows=False, steps=150, seed=0)
    assert (shared["fill_wrong"] == shared["fill_right"]).all()  # one set of length logits
    assert shared["fill_wrong"].iloc[-1] < 1.0


def test_toy_is_deterministic_per_seed():
    a, b = train_toy("bnpo", knows=True, steps=20, seed=3), train_toy("bnpo", knows=True, steps=20, seed=3)
    pd.testing.assert_frame_equal(a, b)


def test_filler_probe_runs_on_a_gpt2():
    from xxpo_lab import Config
    from xxpo_lab.policy import build_policy
    from xxpo_lab.probes import filler_probe

    tok = char_tokenizer()
    model = build_policy(Config(n_layer=1, n_head=2, n_embd=16), tok)
    task = make_task("copy", 3)
    out = filler_probe(model, tok, task, task.sample(8, random.Random(0)), T_max=8, temperature=1.0,
                       rng=random.Random(1))
    assert all(math.isfinite(v) for v in out.values()) and 0 <= out["correct"] <= 8


def test_conditional_length_is_deterministic_and_leaves_global_rng_alone():
    from xxpo_lab import Config
    from xxpo_lab.policy import build_policy
    from xxpo_lab.probes import conditional_length

    cfg = Config(task="copy", difficulty=2, n_layer=1, n_head=2, n_embd=16, T_max=6)
    tok = char_tokenizer()
    model = build_policy(cfg, tok)
    task = make_task("copy", 2)
    state = torch.random.get_rng_state()
    a = conditional_length(model, tok, task, cfg, n_prompts=8, G=4)
    b = conditional_length(model, tok, task, cfg, n_prompts=8, G=4)
    assert torch.equal(state, torch.random.get_rng_state())
    assert a.keys() == b.keys() and all(a[k] == b[k] or (math.isnan(a[k]) and math.isnan(b[k])) for k in a)
    assert {"probe/tf_correct", "probe/tf_wrong", "probe/own_gap", "probe/own_prompts_used"} <= a.keys()
