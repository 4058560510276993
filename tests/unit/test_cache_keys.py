"""The run cache is exactly as wide as it must be: a run's key changes when code it executes changes, and
only then. Each case edits a copy of the package's real source text (nothing is monkeypatched) and compares
the keys of a GRPO run, a SAPO run and their warm start before and after."""

import pytest
import torch

from xxpo_lab import Config, resolve
from xxpo_lab.codekey import code_hash, package_sources
from xxpo_lab.policy import warm_key
from xxpo_lab.runs import run_key

CPU = torch.device("cpu")
GRPO = resolve(Config(task="reverse", loss="grpo"))
SAPO = resolve(Config(task="reverse", loss="sapo"))
ADDITION = resolve(Config(task="addition", loss="grpo"))
DUMMY_LOSS = '''def dummy(logp, b, cfg):
    """A new loss: changes nothing that exists."""
    return aggregate(-torch.exp(logp - b.prox_logp) * b.adv, b.mask, "token-mean"), LossInfo(ratio=logp.detach())


'''


def edit(module: str, old: str, new: str) -> dict[str, str]:
    sources = package_sources()
    assert old in sources[module], f"{old!r} is not in {module}.py any more: update this test"
    return sources | {module: sources[module].replace(old, new, 1)}


def keys(sources=None) -> dict[str, str]:
    return {"grpo": run_key(GRPO, CPU, 1, sources), "sapo": run_key(SAPO, CPU, 1, sources),
            "addition": run_key(ADDITION, CPU, 1, sources), "warm": warm_key(GRPO, CPU, sources)}


BEFORE = keys()

KEEPS_EVERYTHING = {
    "a plot": ("plots", "def style()", "def a_new_plot():\n    return 1\n\n\ndef style()"),
    "the plots' colours": ("plots", "#1f77b4", "#000000"),
    "a chapter helper (toy)": ("toy", "lr: float = 0.05", "lr: float = 0.5"),
    "a chapter helper (probes)": ("probes", "return torch.cumprod(p_dot, dim=1).sum(-1)",
                                  "return 2 * torch.cumprod(p_dot, dim=1).sum(-1)"),
    "the explorer": ("explorer", "T_MAX = 16", "T_MAX = 32"),
    "the family tree": ("family", "1992", "1991"),
    "the command line": ("cli", '"reward/mean", "len/mean"', '"len/mean"'),
    "the run tables": ("tables", '"start": values.iloc[0]', '"start": values.iloc[1]'),
    "a new loss in losses.py": ("losses", "@dataclass(frozen=True)\nclass Loss:", DUMMY_LOSS + "@dataclass(frozen=True)\nclass Loss:"),
    "its entry in the registry": ("losses", "LOSSES = {\n", 'LOSSES = {\n    "dummy": Loss(dummy, "a dummy"),\n'),
    "a docstring and a comment in the loop": ("loop", "One step of RL; returns its row of metrics.",
                                              "One step of RL. # not code"),
    "the cache plumbing": ("store", "[:20]", "[:24]"),
}


@pytest.mark.parametrize("what", list(KEEPS_EVERYTHING))
def test_editing_code_no_run_executes_keeps_every_cached_run_and_warm_start(what):
    assert keys(edit(*KEEPS_EVERYTHING[what])) == BEFORE


CHANGES = {  # what is edited -> the keys that must change (the others must not)
    "the loop": (("loop", "cfg.lr * min(", "0.5 * cfg.lr * min("), {"grpo", "sapo", "addition"}),
    "GRPO's loss": (("losses", '"seq-mean-token-mean"), info\n', '"token-mean"), info\n'), {"grpo", "addition"}),
    "the clip (GRPO uses it, SAPO does not)": (("blocks", "clipped = -torch.clamp(", "clipped = -0.5 * torch.clamp("),
                                               {"grpo", "addition"}),
    "SAPO's gate": (("blocks", "gate = torch.sigmoid(", "gate = 0.5 * torch.sigmoid("), {"sapo"}),
    "GRPO's advantage": (("advantages", "(g.std(-1, keepdim=True) + cfg.adv_eps)",
                          "(g.std(-1, keepdim=True) + 2 * cfg.adv_eps)"), {"grpo", "sapo", "addition"}),
    "a metric": (("diagnostics", '"reward/mean": b.reward.mean().item()', '"reward/mean": b.reward.sum().item()'),
                 {"grpo", "sapo", "addition"}),
    "the sampler": (("rollout", "logits.float() / temperature", "logits.float() / (2 * temperature)"),
                    {"grpo", "sapo", "addition", "warm"}),
    "the reversal task": (("tasks", '"reverse": lambda d: StringTask(d, "reverse", lambda s: s[::-1])',
                           '"reverse": lambda d: StringTask(d, "reverse", lambda s: s[::-2])'), {"grpo", "sapo", "warm"}),
    "the warm start": (("policy", "loss = -(logp * mask).sum() / mask.sum()", "loss = -(logp * mask).mean()"),
                       {"grpo", "sapo", "addition", "warm"}),
    "the registry entry of GRPO": (("losses", '"GRPO: token clip, per-sequence mean (1/|y|), group z-score advantage",\n'
                                              '        {"adv": "grpo"},',
                                    '"GRPO: token clip, per-sequence mean (1/|y|), group z-score advantage",\n'
                                    '        {"adv": "dr_grpo"},'), {"grpo", "addition"}),
}


@pytest.mark.parametrize("what", list(CHANGES))
def test_editing_code_a_run_executes_retrains_exactly_the_runs_that_execute_it(what):
    edited, must_change = CHANGES[what]
    after = keys(edit(*edited))
    changed = {name for name in BEFORE if after[name] != BEFORE[name]}
    assert changed == must_change


def test_the_code_hash_ignores_docstrings_comments_and_layout():
    base = {"m": 'X = 1\n"""doc of X"""\n\n\ndef f(a):\n    """Doc."""\n    return a + X  # add\n'}
    same = {"m": 'X = 1\n"""new doc"""\n\n\ndef f(a):\n    return (a\n            + X)\n'}
    assert code_hash(["m.f"], None, base) == code_hash(["m.f"], None, same)
    assert code_hash(["m.f"], None, base) != code_hash(["m.f"], None, {"m": base["m"].replace("X = 1", "X = 2")})
    assert code_hash(["m.f"], None, base) != code_hash(["m.f"], None, {"m": base["m"].replace("a + X", "a - X")})
