"""Reading run tables (summary, where, per_seed, by_seed, wins, reached, updates, group_counts), gluing them, and the columns compare adds."""

from dataclasses import replace

import pandas as pd
import pytest

from xxpo_lab import compare, summary, updates
from xxpo_lab.interactive import glue_table, slug
from xxpo_lab.tables import by_seed, first_reached, group_counts, per_seed, reached, where, wins

MEM = {"mem/policy_params_mb": 1.0, "mem/policy_optim_mb": 2.0, "mem/critic_params_mb": 0.0,
       "mem/critic_optim_mb": 0.0, "mem/peak_mb": 100.0}


@pytest.fixture
def table():
    """Two runs, two seeds, 3 steps + a final evaluation row, two updates per step."""
    rows = []
    for run, loss, shift in (("a K=2", "ppo", 0.0), ("b K=2", "pg", -0.1)):
        for seed in (0, 1):
            for step in range(4):
                acc = [0.5, 0.6, 0.4, 0.7][step] + shift + 0.01 * seed
                row = {"run": run, "loss": loss, "epochs": 2, "seed": seed, "step": step, "samples": 8 * (step + 1),
                       "eval/accuracy": acc, "time/step": 0.01 * (step + 1), **MEM}
                if step < 3:
                    row |= {"kl/k3@u0": 0.0, "kl/k3@u1": 0.1 * step + seed, "groups/correct@0": 0.25,
                            "groups/correct@1": 0.75}
                rows.append(row)
    return pd.DataFrame(rows)


def test_summary_start_end_mean_low_and_the_last_update(table):
    s = summary(table, last_update=["kl/k3"]).set_index(["run", "seed"])
    first = s.loc[("a K=2", 0)]
    # accuracy 0.5, 0.6, 0.4, 0.7: start 0.5, end 0.7, mean of the three after the start 0.5667, low 0.4
    assert (first.start, first.end, first.low) == (0.5, 0.7, 0.4)
    assert first["mean"] == pytest.approx((0.6 + 0.4 + 0.7) / 3)
    assert first.step_ms == pytest.approx(25.0) and first.train_s == pytest.approx(0.1)  # median 0.025 s, sum 0.1
    assert first.model_mb == 3.0 and first.samples == 32
    assert first["kl/k3 (last update)"] == pytest.approx(0.2)  # max of kl/k3@u1 over steps: 0, 0.1, 0.2
    assert s.loc[("a K=2", 1), "kl/k3 (last update)"] == pytest.approx(1.2)
    assert s.loc[("b K=2", 0), "loss"] == "pg"  # the identifying columns ride along


def test_wins_counts_seeds_where_one_run_beats_another(table):
    s = summary(table)
    assert wins(s, "a K=2", "b K=2") == 2 and wins(s, "b K=2", "a K=2") == 0
    shifted = s.assign(mean=s["mean"] + s["seed"].map({0: 0.0, 1: 0.2}) * (s["run"] == "b K=2"))
    assert wins(shifted, "b K=2", "a K=2") == 1  # seed 1 only


def test_where_selects_rows_by_value_or_any_of_a_list(table):
    assert set(where(table, run="a K=2")["loss"]) == {"ppo"}
    assert len(where(table, run=["a K=2", "b K=2"], seed=1)) == 2 * 4
    assert len(where(table, loss="ppo", seed=(0, 1), step=3)) == 2
    assert where(table, loss="grpo").empty
    with pytest.raises(KeyError, match="where: no column 'eps'.*'run', 'loss', 'epochs', 'seed'"):
        where(table, eps=0.2)


def test_per_seed_and_by_seed_lay_a_summary_out_by_seed(table):
    s = summary(table)
    end = per_seed(s, "end")
    assert list(end.index) == [0, 1] and list(end.columns) == ["a K=2", "b K=2"]
    assert end.loc[1, "b K=2"] == pytest.approx(0.7 - 0.1 + 0.01)
    assert per_seed(s, "end", by="loss").loc[0, "pg"] == pytest.approx(0.6)
    shown = by_seed(s, ["start", "end"])
    assert list(shown.index) == ["a K=2", "b K=2"]
    assert list(shown.columns) == [("start", 0), ("start", 1), ("end", 0), ("end", 1)]
    assert shown.loc["a K=2", ("end", 1)] == pytest.approx(0.71)
    two = by_seed(s, ["end"], by=["loss", "run"])
    assert list(two.index) == [("pg", "b K=2"), ("ppo", "a K=2")] and two.loc[("pg", "b K=2"), ("end", 0)] == 0.6


def test_reached_is_what_one_run_logged_within_another_runs_budget(table):
    slow = table.assign(run="slow", **{"time/elapsed": table["step"] * 2.0})
    fast = table.assign(run="fast", **{"time/elapsed": table["step"] * 1.0})
    both = pd.concat([where(slow, seed=[0, 1]).drop_duplicates(["seed", "step"]),
                      where(fast, seed=[0, 1]).drop_duplicates(["seed", "step"])])
    # slow ends at elapsed 6: fast has logged steps 0..3 by then -> its last value, 0.7 (+0.01 on seed 1)
    assert reached(both, "fast", within="slow").tolist() == pytest.approx([0.7, 0.71])
    # fast ends at elapsed 3: slow has logged steps 0 and 1 (elapsed 0, 2) -> 0.6
    assert reached(both, "slow", within="fast").tolist() == pytest.approx([0.6, 0.61])
    assert reached(both, "slow", within="fast", x="step").tolist() == pytest.approx([0.7, 0.71])


def test_first_reached_is_the_cost_to_a_target(table):
    # run a: accuracy 0.5, 0.6, 0.4, 0.7 at samples 8, 16, 24, 32 (seed 1: +0.01); b is 0.1 lower
    cost = first_reached(table, 0.6, x="samples")
    assert cost.loc["a K=2"].tolist() == [16, 16]  # reached at step 1, and the dip after it does not count
    assert cost.loc["b K=2"].tolist() == [32, 32]  # 0.5 at step 1 is short: b needs step 3 (0.6, 0.61)
    assert first_reached(table, 0.65, x="samples").loc["b K=2"].isna().all()  # b never reaches 0.65
    assert first_reached(table, 0.55, x="step").loc["a K=2"].tolist() == [1, 1]


def test_updates_and_group_counts_are_long_tables(table):
    long = updates(table, ["kl/k3"])
    assert sorted(long["update"].unique()) == [0, 1] and "kl/k3" in long and "loss" in long
    assert len(long) == 2 * 2 * 3 * 2  # runs x seeds x steps x updates (the evaluation row has none)
    counts = group_counts(table)
    assert set(counts["k"]) == {0, 1} and counts.groupby("k")["share"].mean().to_dict() == {0: 0.25, 1: 0.75}
    with pytest.raises(KeyError, match="no column of the form"):
        updates(table, ["clip/active_frac"])


def test_glue_table_names_and_ranges(table, monkeypatch):
    glued = {}
    monkeypatch.setattr("xxpo_lab.interactive.glue", lambda name, value, fmt="": glued.update({name: format(value, fmt)}))
    glue_table("learn", summary(table), ["end", "mean"], fmt={"mean": ".3f"})
    assert glued["learn_a_K2_end_min"] == "0.70" and glued["learn_a_K2_end_max"] == "0.71"
    assert glued["learn_b_K2_mean_min"] == "0.467"
    assert slug("PPO (critic + GAE)") == "PPO_critic_GAE" and slug("Dr. GRPO") == "Dr_GRPO"


def test_glue_range_leaves_out_missing_values_and_says_none_when_all_are(monkeypatch, recwarn):
    from xxpo_lab.interactive import glue_range

    glued = {}
    monkeypatch.setattr("xxpo_lab.interactive.glue", lambda name, value, fmt="": glued.update({name: format(value, fmt)}))
    glue_range("cost", [float("nan"), 7680.0, 6400.0], ".0f")  # one seed never reached the target
    assert (glued["cost_min"], glued["cost_max"]) == ("6400", "7680")
    glue_range("never", [float("nan"), float("nan")], ".0f")
    assert (glued["never_min"], glued["never_max"]) == ("none", "none")
    assert not recwarn.list  # no RuntimeWarning printed into a page


def test_compare_adds_the_loss_and_every_varying_field_as_columns(tiny):
    table = compare({"one": replace(tiny, steps=2), "two": replace(tiny, steps=2, epochs=2, lr=1e-3)},
                    seeds=[0], progress=False)
    assert {"loss", "epochs", "lr"} <= set(table.columns) and "P" not in table  # P is the same in both
    assert table.groupby("run")["epochs"].first().to_dict() == {"one": 1, "two": 2}
    assert set(table["loss"]) == {"grpo"}
    assert table.attrs["configs"]["two"]["lr"] == 1e-3


def test_check_fails_a_build_whose_run_no_longer_supports_a_claim(monkeypatch, capsys):
    from xxpo_lab.interactive import ClaimError, check

    check("2 > 1", 2 > 1)
    with pytest.raises(ClaimError, match="the page claims: 'the clip helps'"):
        check("the clip helps", False)
    monkeypatch.setenv("XXPO_FAST", "1")  # small runs cannot show it: said, not raised
    check("the clip helps", False)
    assert "fast mode, not checked: the clip helps" in capsys.readouterr().out
    long_claim = "GRPO weighs a token of a short answer more than a token of a long one " * 3
    check(long_claim, False)  # wrapped to fit the page's text column (the browser layer checks widths)
    printed = capsys.readouterr().out
    assert max(len(line) for line in printed.splitlines()) <= 72
    assert " ".join(printed.split()) == f"fast mode, not checked: {long_claim.strip()}"


def test_a_compare_table_takes_a_new_column_without_a_fragmentation_warning(tiny):
    """Runs with different numbers of updates log different per-update columns; the joined table must still be
    one consolidated frame, or a chapter adding a column prints pandas' PerformanceWarning onto the page."""
    import warnings

    table = compare({"K=1": tiny, "K=8": replace(tiny, epochs=2, minibatches=4),
                     "K=32": replace(tiny, epochs=8, minibatches=4)}, seeds=[0, 1], progress=False)
    # consolidated: one block per NumPy dtype and one per string column (62 blocks before the fix; pandas warns
    # from 100 on, which the chapters' larger tables reached)
    assert table._mgr.nblocks < 12
    with warnings.catch_warnings():
        warnings.simplefilter("error", pd.errors.PerformanceWarning)
        table["variant"] = table["loss"]
