"""Count what the code cells of the chapters spend their lines on: wrangling, glue, plotting, library calls.

    python benchmarks/chapter_code.py chapters/01_*.ipynb chapters/02_*.ipynb chapters/03_*.ipynb

Each non-blank, non-comment line of a code cell (the install cell excluded) gets the first category
whose pattern it matches. A rough but fixed rule, so that two versions of the book can be compared.
"""

from __future__ import annotations

import json
import re
import sys
from collections import Counter

RULES = [
    ("import", r"^\s*(import |from \S+ import )"),
    ("glue", r"\bglue\("),
    ("matplotlib", r"\b(plt|ax|axes|fig)\.|\bax\b.*\.(plot|scatter|bar|fill_between|set_)|plt\.subplots"),
    ("wrangling", r"groupby|pivot|\.loc\[|\.iloc\[|\.str\.|\.assign\(|DataFrame\(|concat\(|\.filter\(|\.apply\("
                  r"|\.agg\(|unstack|reset_index|set_index|\.rename\(|dropna|\.isin\(|\.map\(|\.extract\(|split\("
                  r"|\.mean\(|\.min\(|\.max\(|\.sum\(|\.round\(|\.tail\(|\.head\(|\[\w+\.\w+ ?[=!<>]=?"),
    ("library", r"\bxxpo_lab\.|\b(Config|replace|compare|train|show\w*|sweep\w*|curves|plot_curves|per_value|by_update"
                r"|measure_gradients|score_norms|cached_table|parallel_map|inspect\.getsource|token_weights|train_toy"
                r"|make_policy|load_policy|conditional_length|windowed_lengths|group_advantage_mass|family_\w+|make_task"
                r"|style|pick|summary|updates|band|token_view|worked_example|reuse_batch)\("),
    ("other", r"."),
]


def classify(line: str) -> str:
    return next(name for name, pattern in RULES if re.search(pattern, line))


def count(path: str) -> Counter:
    nb = json.load(open(path))
    counts = Counter()
    for cell in nb["cells"]:
        if cell["cell_type"] != "code":
            continue
        src = "".join(cell["source"])
        if "XXPO_REPO" in src:  # the install cell
            continue
        for line in src.splitlines():
            if line.strip() and not line.strip().startswith("#"):
                counts[classify(line)] += 1
    return counts


if __name__ == "__main__":
    total = Counter()
    for path in sys.argv[1:]:
        c = count(path)
        total += c
        print(f"{path}: {sum(c.values())} lines " + ", ".join(f"{k} {v}" for k, v in sorted(c.items())))
    n = sum(total.values())
    print(f"all: {n} lines " + ", ".join(f"{k} {v} ({v / n:.0%})" for k, v in sorted(total.items())))
