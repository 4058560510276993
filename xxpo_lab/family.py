"""The XXPO family tree as data, and the figure drawn from it (chapter 0).

Each member names its parents and the one thing it changes (ALGORITHMS.md §11); the figure places
members by year and draws every parent → child edge labelled with that change.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd


@dataclass(frozen=True)
class Member:
    name: str
    year: int
    row: float
    """Vertical lane in the figure (families stay together)."""
    parents: tuple[str, ...]
    edge: str
    """The one thing it changes, short enough to label an edge."""
    change: str
    """The one thing it changes, in a sentence."""
    chapter: int | None = None
    """The chapter planned to explain it (DESIGN.md's plan); the book shows it only once that chapter exists."""
    loss: str = ""
    """Its name in xxpo_lab.LOSSES or ADVANTAGES, when the lab implements it."""


FAMILY = [
    Member("REINFORCE", 1992, 0.0, (), "", "the score-function policy gradient, optionally minus a reward baseline",
           1, "pg"),
    Member("TRPO", 2015, 7.0, (), "", "a KL-constrained second-order policy step"),
    Member("PPO", 2017, 5.0, ("TRPO", "REINFORCE"), "clip the ratio",
           "clipped ratio surrogate instead of a KL-constrained second-order step", 1, "ppo"),
    Member("PPO-RLHF", 2019, 7.5, ("PPO",), "token MDP, KL in reward",
           "token-level MDP; per-token KL-to-reference penalty in the reward; value head", 1, "ppo"),
    Member("Decoupled PPO", 2021, 9.0, ("PPO",), "prox ≠ behaviour",
           "separate behaviour policy (IS weight) from proximal policy (clip anchor)", 6, "decoupled_ppo"),
    Member("ReMax", 2023, -1.5, ("REINFORCE",), "greedy baseline", "greedy-decode reward as baseline, no critic"),
    Member("RLOO", 2024, 0.5, ("REINFORCE",), "leave-one-out baseline",
           "leave-one-out group baseline, sequence-level action, no clipping", 2, "rloo"),
    Member("GRPO", 2024, 3.0, ("PPO",), "group baseline, no critic",
           "group-standardised outcome advantage replaces critic + GAE; k3 KL moved into the loss", 2, "grpo"),
    Member("Self-Play PO", 2024, -3.0, ("REINFORCE",), "regress log-ratio on win rate",
           "squared regression of the log-ratio onto η(P̂(win) - ½)", 8, "self_play_po"),
    Member("REINFORCE++", 2025, -0.5, ("REINFORCE", "PPO"), "batch-normalised advantage",
           "global batch advantage normalisation (+ PPO clip, token KL in reward)", 10, "reinforce_pp"),
    Member("Dr. GRPO", 2025, 1.0, ("GRPO",), "no 1/|y|, no std", "drop 1/|y_i| and the group std", 3, "dr_grpo"),
    Member("DAPO", 2025, 2.0, ("GRPO",), "clip-higher, token-mean, dynamic sampling",
           "eps_high > eps_low, token-level loss, dynamic sampling, overlong shaping, no KL", 4, "dapo"),
    Member("GPG", 2025, -2.0, ("GRPO",), "plain PG, no ratio or clip",
           "plain PG loss without ratio/clip/KL, rescaled advantage"),
    Member("Clip-Cov / KL-Cov", 2025, 4.0, ("GRPO",), "restrain high-covariance tokens",
           "extra clip/KL on the tokens with largest logp-advantage covariance"),
    Member("CISPO", 2025, 1.5, ("DAPO",), "clip the IS weight, keep the gradient",
           "clip and stop-grad the IS weight instead of dropping the token's gradient", 10, "cispo"),
    Member("GSPO", 2025, 3.5, ("GRPO",), "sequence-level ratio",
           "sequence-level length-normalised ratio and sequence-level clipping", 5, "gspo"),
    Member("GMPO", 2025, 2.5, ("GRPO",), "geometric mean of token terms",
           "geometric instead of arithmetic mean of token terms; wide per-token log-space clip", 10, "gmpo"),
    Member("TIS / MIS", 2025, 6.5, ("PPO",), "truncated IS for engine mismatch",
           "truncated / masked IS weight between inference and training engines"),
    Member("M2PO", 2025, 10.0, ("Decoupled PPO",), "bound the 2nd moment of IS weights",
           "mask tokens to bound the second moment of log IS weights"),
    Member("SAPO", 2025, 4.5, ("GSPO",), "soft gate instead of hard clip",
           "smooth sigmoid gate with asymmetric temperatures instead of a hard clip", 9, "sapo"),
    Member("A-3PO", 2025, 8.5, ("Decoupled PPO",), "interpolated proximal policy",
           "interpolate proximal log-probs from behaviour and current log-probs (no forward pass)", 7, "a3po"),
    Member("DPPO", 2026, 6.0, ("PPO",), "divergence trust region",
           "trust region defined by a binary TV/KL divergence, not the ratio"),
    Member("LUSPO", 2026, 3.0, ("GSPO",), "sequence loss × its length",
           "GSPO with each sequence's loss multiplied by its length, removing the 1/|y_i| weight", 5, "luspo"),
    Member("SPPO (sequence-level)", 2026, 5.5, ("PPO", "GRPO"), "prompt-only critic, 1 sample",
           "prompt-only scalar critic, sequence advantage, one sample per prompt", 8, "sppo"),
]


BOOK = ('00_family', '01_reinforce_to_ppo', '02_ppo_to_grpo', '03_grpo_to_dr_grpo', '04_grpo_to_dapo', '05_grpo_to_gspo', '06_ppo_to_decoupled_ppo', '07_decoupled_ppo_to_a3po', '08_grpo_to_sppo', '09_hard_clip_to_sapo', '10_sampler_is_not_the_trainer', '13_lab_to_production')
"""The book's chapters in order, as `_toc.yml` lists them (`make sync` writes this line; a test checks it)."""


def chapter_in_book(member: Member) -> int | None:
    """The number of the chapter of this book that explains `member`, or None if none does (yet)."""
    numbers = {int(stem[:2]) for stem in BOOK if stem[:2].isdigit()}
    return member.chapter if member.chapter in numbers else None


def family_table() -> pd.DataFrame:
    """One row per member: year, parents, the one thing it changes, its chapter in this book, its name in the lab."""
    return pd.DataFrame(
        [{"algorithm": m.name, "year": m.year, "parents": ", ".join(m.parents) or "-", "what it changes": m.change,
          "chapter": chapter_in_book(m) or "-", "in xxpo_lab": m.loss or "-"} for m in FAMILY]
    )


def layout() -> dict[str, tuple[float, float]]:
    """(x, y) of each member: x = generation (1 + the deepest parent), y = order within the generation,
    children sorted by the mean position of their parents so that edges cross as little as possible."""
    by_name = {m.name: m for m in FAMILY}
    depth: dict[str, int] = {}

    def depth_of(name: str) -> int:
        if name not in depth:
            parents = by_name[name].parents
            depth[name] = 1 + max(map(depth_of, parents)) if parents else 0
        return depth[name]

    columns: dict[int, list[str]] = {}
    for m in FAMILY:
        columns.setdefault(depth_of(m.name), []).append(m.name)
    pos: dict[str, tuple[float, float]] = {}
    for col in sorted(columns):
        def centre(name: str) -> tuple[float, float]:
            ps = by_name[name].parents
            return (sum(pos[p][1] for p in ps) / len(ps) if ps else 0.0, by_name[name].row)

        names = sorted(columns[col], key=centre, reverse=True)  # higher parents and lanes on top
        for i, name in enumerate(names):
            pos[name] = (float(col), (len(names) - 1) / 2 - i)
    return pos


def family_tree(figsize=(11, 10)):
    """The family tree figure: every parent → child edge labelled with the one thing that changed; members
    explained in a chapter of this book are blue and carry its number (`chapter_in_book`)."""
    import textwrap

    import matplotlib.pyplot as plt

    pos = layout()
    fig, ax = plt.subplots(figsize=figsize)
    dx = 3.4  # distance between generations, in data units
    xs = [p[0] * dx for p in pos.values()]
    ys = [p[1] for p in pos.values()]
    ax.set_xlim(min(xs) - 0.9, max(xs) + 0.9)
    ax.set_ylim(min(ys) - 0.6, max(ys) + 0.7)
    boxes = {}
    for m in FAMILY:
        x, y = pos[m.name]
        number = chapter_in_book(m)
        label = textwrap.fill(m.name, 14) + f"\n{m.year}" + (f" · ch. {number}" if number is not None else "")
        boxes[m.name] = ax.text(x * dx, y, label, ha="center", va="center", fontsize=11, zorder=3, linespacing=1.1,
                                fontweight="bold" if number is not None else "normal",
                                bbox={"boxstyle": "round,pad=0.3", "fc": "#dbe9f6" if number is not None else "#f4f4f4",
                                      "ec": "#2f6ea5" if number is not None else "#9a9a9a"})
    ax.axis("off")
    ax.set_title("The XXPO family, parent → child; each edge says what changed (blue: a chapter of this book)",
                 fontsize=12)
    fig.tight_layout()
    fig.canvas.draw()  # the boxes' real widths, so that the edges start and end at them
    to_data = ax.transData.inverted()
    half = {}
    for name, text in boxes.items():
        (x0, _), (x1, _) = to_data.transform(text.get_bbox_patch().get_window_extent())
        half[name] = (x1 - x0) / 2
    for child in FAMILY:
        x1, y1 = pos[child.name]
        for parent in child.parents:
            x0, y0 = pos[parent]
            ax.annotate("", xy=(x1 * dx - half[child.name], y1), xytext=(x0 * dx + half[parent], y0), zorder=1,
                        arrowprops={"arrowstyle": "-|>", "color": "#a0a0a0", "lw": 0.9, "shrinkA": 0, "shrinkB": 0})
        if child.parents:  # the label ends where the edges arrive, just above them
            ax.text(x1 * dx - half[child.name] - 0.1, y1 + 0.1, textwrap.fill(child.edge, 18), fontsize=9,
                    color="#303030", ha="right", va="bottom", style="italic", zorder=2, linespacing=1.0,
                    bbox={"boxstyle": "square,pad=0.1", "fc": "white", "ec": "none", "alpha": 0.9})
    return fig
