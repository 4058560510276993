"""Shared test settings: a private cache folder for warm starts and runs, and a tiny config."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# one cache per test session, shared by xdist workers (files are written atomically)
os.environ.setdefault("XXPO_CACHE", str(ROOT / "tests" / "_artifacts" / "cache"))
os.environ.pop("XXPO_FAST", None)  # unit tests pick their own sizes


def pytest_configure(config):
    import torch

    torch.set_num_threads(1)  # tiny models: two xdist workers with two threads each only fight for the cores


@pytest.fixture
def tiny():
    """A config that warm-starts in a couple of seconds and trains a step in milliseconds."""
    from xxpo_lab import Config

    return Config(task="reverse", difficulty=3, T_max=5, n_layer=1, n_head=2, n_embd=32, P=4, G=4, steps=4,
                  eval_prompts=16, eval_every=2, warm_start_acc=0.3, lr=3e-4)
