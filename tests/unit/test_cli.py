"""The command line: listing, training, comparing, and bad input."""

import json
import subprocess
import sys

import pandas as pd
import pytest

from xxpo_lab import LOSSES
from xxpo_lab.cli import main

TINY = ["--task", "reverse", "--difficulty", "3", "--T-max", "5", "--n-layer", "1", "--n-head", "2", "--n-embd", "32",
        "--P", "4", "--G", "4", "--steps", "3", "--eval-prompts", "16", "--warm-start-acc", "0.3", "--no-progress"]


def test_losses_lists_every_registered_loss(capsys):
    assert main(["losses"]) == 0
    out = capsys.readouterr().out
    for name, spec in LOSSES.items():
        assert f"  {name} " in out and spec.summary in out


def test_train_writes_metrics_config_and_plots(tmp_path, capsys):
    assert main(["train", "--out", str(tmp_path), "--loss", "dapo", "--seed", "3", *TINY]) == 0
    metrics = pd.read_csv(tmp_path / "metrics.csv")
    assert len(metrics) == 4 and "eval/accuracy" in metrics
    attrs = json.loads((tmp_path / "config.json").read_text())
    assert attrs["config"]["loss"] == "dapo" and attrs["config"]["eps_high"] == 0.28 and attrs["config"]["seed"] == 3
    assert (tmp_path / "curves.png").stat().st_size > 10_000
    assert "held-out accuracy" in capsys.readouterr().out


def test_train_parquet_and_checkpoints(tmp_path):
    assert main(["train", "--out", str(tmp_path), "--format", "parquet", "--checkpoint-every", "1", "--no-cache",
                 *TINY]) == 0
    assert len(pd.read_parquet(tmp_path / "metrics.parquet")) == 4
    assert (tmp_path / "checkpoint.pt").exists()


def test_compare_writes_a_table_and_a_figure(tmp_path, capsys):
    assert main(["compare", "--out", str(tmp_path), "--losses", "grpo,dr_grpo", "--seeds", "0,1", "--workers", "1",
                 *TINY]) == 0
    table = pd.read_csv(tmp_path / "metrics.csv")
    assert set(table["run"]) == {"grpo", "dr_grpo"} and set(table["seed"]) == {0, 1}
    assert (table["run"] == table["loss"]).all()  # each label's config names its loss ...
    seed0 = table[table.seed == 0].set_index(["run", "step"])["loss/policy"].dropna()
    assert not seed0["grpo"].equals(seed0["dr_grpo"])  # ... and ran it: same seed, same data, other losses
    summary = pd.read_csv(tmp_path / "summary.csv", index_col=0)
    assert list(summary["seeds"]) == [2, 2]
    # the summary's numbers, recomputed from the metrics table: the last held-out accuracy of each seed
    last = table.dropna(subset=["eval/accuracy"]).groupby(["run", "seed"])["eval/accuracy"].last()
    for run in ("grpo", "dr_grpo"):
        assert summary.loc[run, "eval/accuracy end (mean)"] == pytest.approx(last[run].mean())
        assert summary.loc[run, "eval/accuracy end (std)"] == pytest.approx(last[run].std())
    assert (tmp_path / "comparison.png").exists()
    assert "eval/accuracy end (mean)" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["train", "--out", "x", "--eps-low", "-1"], "Config.eps_low = -1.0 is not allowed"),
    (["train", "--out", "x", "--loss", "ppo3"], "Config.loss = 'ppo3' is not allowed: must be one of a3po"),
    (["train", "--out", "x", "--task", "chess"], "Config.task = 'chess'"),
    (["train", "--out", "x", "--G", "1"], "Config.G = 1"),
    (["compare", "--out", "x", "--losses", "grpo,nope"], "Config.loss = 'nope'"),
    (["compare", "--out", "x", "--losses", "grpo", "--seeds", "0,a"], "invalid literal for int"),
])
def test_bad_input_exits_2_with_a_message(args, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # should a bug let the command run, its --out x lands in a temp folder
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_help_everywhere():
    for command in ([], ["train"], ["compare"], ["losses"]):
        out = subprocess.run([sys.executable, "-m", "xxpo_lab", *command, "--help"], capture_output=True, text=True)
        assert out.returncode == 0 and "usage:" in out.stdout
    out = subprocess.run([sys.executable, "-m", "xxpo_lab", "train", "--help"], capture_output=True, text=True).stdout
    assert "--eps-high" in out and "clip-higher" in out  # options carry the fields' docstrings


def test_train_and_compare_have_a_default_output_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["train", *TINY]) == 0
    assert (tmp_path / "runs" / "grpo-reverse-seed0" / "metrics.csv").exists()
    assert main(["compare", "--losses", "grpo", "--seeds", "0", "--workers", "1", *TINY]) == 0
    assert (tmp_path / "runs" / "compare-grpo-reverse" / "summary.csv").exists()
