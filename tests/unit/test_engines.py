"""Chapter 13's engine helpers that the chapter cannot exercise on the website: the Colab path that loads a model
by name (tested on a tiny GPT-2 with a byte-level BPE tokenizer saved to a temp folder, which the lab warm-starts
on the task before TRL trains it) and the crosswalk-driven TRL trainer construction."""

from __future__ import annotations

import pandas as pd
import pytest

from tests.unit.test_pretrained import pretrained_dir  # noqa: F401
from xxpo_lab import Config
from xxpo_lab.config import ConfigError
from xxpo_lab.integrations.engines import cached, on_colab, trl_training

TINY = Config(task="addition", difficulty=1, T_max=4, P=4, G=4, eval_prompts=16, warm_start_acc=0.2, lr=3e-4,
              epochs=2, eval_every=1)


def test_trl_trains_a_model_loaded_by_name_with_a_lab_loss(pretrained_dir, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setenv("XXPO_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    table = trl_training(TINY, steps=2, lab_loss="gmpo", lab_config={"eps_low": 0.4, "eps_high": 0.4},
                         model_name=str(pretrained_dir), beta=0.0)
    assert list(table["step"]) == [0, 1, 2]
    assert table["eval/accuracy"].notna().all()  # the lab's evaluator before and after each batch
    assert table["reward"].iloc[:2].notna().all() and table["loss"].iloc[:2].notna().all()
    assert list(table["eval/samples"]) == [0, 16, 32]


def test_a_setting_the_lab_loss_cannot_honour_fails_before_training(pretrained_dir, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setenv("XXPO_CACHE", str(tmp_path))
    with pytest.raises(ConfigError, match="importance_sampling_level = 'sequence' is not allowed"):
        trl_training(TINY, steps=1, lab_loss="sapo", model_name=str(pretrained_dir),
                     importance_sampling_level="sequence")


def test_this_is_not_colab():
    assert not on_colab()


CALLS = []


def count_calls(cfg):
    CALLS.append(cfg.seed)
    return pd.DataFrame({"seed": [cfg.seed]})


def test_cached_tables_keep_fast_and_full_mode_apart(tmp_path, monkeypatch):
    """reuse_one_batch and sample_batch shrink their config in fast mode; an entry computed in one mode must not
    be served in the other (a fast-mode notebook run once fed chapter 13's full build its numbers)."""
    monkeypatch.setenv("XXPO_CACHE", str(tmp_path))
    CALLS.clear()
    for fast in ("1", "0", "1", "0"):
        monkeypatch.setenv("XXPO_FAST", fast)
        cached(count_calls, TINY, ["grpo"])
    assert CALLS == [0, 0]  # one computation per mode, then each mode's own entry
