"""Count what the code cells of the chapters spend their statements on: wrangling, glue, plotting, library calls.

    python benchmarks/chapter_code.py chapters/01_*.ipynb chapters/02_*.ipynb chapters/03_*.ipynb

Each simple statement of a code cell (the install cell excluded; a statement spread over several lines
counts once, so the count does not depend on formatting) gets the first category whose pattern its text
matches. A rough but fixed rule, so that two versions of the book can be compared. Also prints physical
lines, for reference.
"""

from __future__ import annotations

import ast
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


def statements(source: str) -> list[str]:
    """The text of every simple statement (compound statements count through their bodies and header)."""
    tree = ast.parse(source)
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.stmt) and not hasattr(node, "body"):
            out.append(ast.get_source_segment(source, node))
        elif isinstance(node, ast.For | ast.If | ast.While | ast.With):  # the header line
            out.append(source.splitlines()[node.lineno - 1])
    return out


def count(path: str) -> tuple[Counter, int]:
    nb = json.load(open(path))
    counts, lines = Counter(), 0
    for cell in nb["cells"]:
        if cell["cell_type"] != "code":
            continue
        src = "".join(cell["source"])
        if "XXPO_REPO" in src:  # the install cell
            continue
        lines += sum(1 for line in src.splitlines() if line.strip() and not line.strip().startswith("#"))
        for statement in statements(src):
            counts[classify(" ".join(statement.split()))] += 1
    return counts, lines


PANDAS = re.compile(r"\.groupby\(|\.pivot(_table)?\(|\.loc\[|\.iloc\[|\.str\.|\.assign\(|pd\.concat\(|\.merge\(|\.unstack\("
                    r"|\.set_index\(|\.reset_index\(|\.rename\(|\.dropna\(|\.apply\(|\.agg\(|\.isin\(|\.query\("
                    r"|\.filter\(|\.where\(|\.map\(")
PARSING = re.compile(r"\.str\.(extract|split|rsplit)|\[\"run\"\]\.str|@u|@\{|groups/correct@|filter\((like|regex)=|fill_between\(")
"""Parsing parameters out of run labels or metrics out of column names, and hand-drawn seed bands."""


def operations(path: str) -> tuple[int, int]:
    """(pandas operations, label/column-name parsing and hand-drawn bands) in the code cells."""
    cells = ["".join(c["source"]) for c in json.load(open(path))["cells"] if c["cell_type"] == "code"]
    return sum(len(PANDAS.findall(c)) for c in cells), sum(len(PARSING.findall(c)) for c in cells)


if __name__ == "__main__":
    total, total_lines = Counter(), 0
    for path in sys.argv[1:]:
        c, lines = count(path)
        total += c
        total_lines += lines
        print(f"{path}: {sum(c.values())} statements ({lines} lines): " + ", ".join(f"{k} {v}" for k, v in sorted(c.items())))
    n = sum(total.values())
    print(f"all: {n} statements ({total_lines} lines): " + ", ".join(f"{k} {v} ({v / n:.0%})" for k, v in sorted(total.items())))
    ops = [operations(path) for path in sys.argv[1:]]
    print(f"pandas operations: {sum(o for o, _ in ops)}; parsing labels or column names, hand-drawn bands: "
          f"{sum(p for _, p in ops)}")
