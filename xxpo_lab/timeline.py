"""Synchronous and asynchronous RL on a clock: when each batch is generated and when it is trained.

A time model fed with phase times (the lab measures them: time/sample + time/score generate a batch,
time/prox + time/update train on it). One generator and one trainer, as in AReaL with its inference
and training GPUs split in two pools. Book: ch. 6.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd


def schedule(gen_s: Sequence[float], train_s: Sequence[float], d_max: int) -> pd.DataFrame:
    """When each of n steps is generated and trained, with staleness bounded by d_max.

    Batch k is generated once the generator is free and the policy of version k - d_max exists (the
    trainer has finished step k - d_max - 1), with the newest weights the trainer has published; step k
    trains once batch k exists and step k - 1 is done. d_max = 0 is synchronous RL (generate, then train,
    then generate with the new weights); d_max >= 1 overlaps the two (AReaL's max_head_offpolicyness).

    gen_s, train_s: seconds of each step's generation and training (n each). Returns one row per phase
    and step: phase ('generate' | 'train'), step, start, end, and for 'generate' the policy version that
    sampled it and its staleness (k - version, at most d_max).
    """
    if d_max < 0:
        raise ValueError(f"d_max = {d_max!r} is not allowed: the staleness bound must be an integer >= 0")
    if len(gen_s) != len(train_s):
        raise ValueError(f"gen_s has {len(gen_s)} steps and train_s {len(train_s)}: give one time per step to each")
    gen_end, train_end, rows = [], [], []
    for k, (g, t) in enumerate(zip(gen_s, train_s)):
        ready = train_end[k - d_max - 1] if k - d_max - 1 >= 0 else 0.0  # version k - d_max exists
        start = max(gen_end[-1] if gen_end else 0.0, ready)
        version = sum(end <= start for end in train_end)  # the newest weights published by then
        gen_end.append(start + g)
        rows.append({"phase": "generate", "step": k, "start": start, "end": gen_end[-1], "version": version,
                     "staleness": k - version})
        t_start = max(gen_end[-1], train_end[-1] if train_end else 0.0)
        train_end.append(t_start + t)
        rows.append({"phase": "train", "step": k, "start": t_start, "end": train_end[-1]})
    return pd.DataFrame(rows)


def steps_per_second(table: pd.DataFrame) -> float:
    """Training steps finished per second over a `schedule`: n steps / the time the last one ends."""
    train = table[table.phase == "train"]
    return len(train) / train["end"].max()
