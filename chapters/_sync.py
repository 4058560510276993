"""Keep the chapter notebooks in their committed form: `python chapters/_sync.py` (or `make sync`).

- The first code cell of every notebook is the install cell, rendered from the repository URL and
  branch in `_config.yml` (the one place they are written).
- Outputs and execution counts are stripped: the website shows the outputs of its own build.
- `xxpo_lab.family.BOOK`, the chapters the family tree marks as explained, is rewritten from `_toc.yml`.
Unit tests check all three, so a notebook or a chapter list that drifts fails `make test`.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import nbformat
import yaml

ROOT = Path(__file__).resolve().parent.parent
INSTALL_MARK = "# Runs anywhere:"


def repository() -> tuple[str, str]:
    cfg = yaml.safe_load((ROOT / "_config.yml").read_text())
    return cfg["repository"]["url"], cfg["repository"]["branch"]


def install_cell() -> str:
    url, branch = repository()
    return (
        f"{INSTALL_MARK} installs xxpo_lab from the book's repository when it\n"
        "# is missing (Colab), and does nothing where it is already installed.\n"
        f'XXPO_REPO = "git+{url}@{branch}"\n'
        "try:\n"
        "    import xxpo_lab\n"
        "except ImportError:\n"
        "    %pip install -q {XXPO_REPO}\n"
        "    import xxpo_lab"
    )


def book_chapters() -> tuple[str, ...]:
    """The numbered chapters of `_toc.yml` (file stems such as '01_reinforce_to_ppo'), in order."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [toc["root"]] + [c["file"] for part in toc.get("parts", []) for c in part["chapters"]]
    stems = [Path(f).name for f in files]
    return tuple(s for s in stems if re.match(r"\d\d_", s))


def sync_family() -> bool:
    """Rewrite the BOOK line of xxpo_lab/family.py from _toc.yml; True if it changed."""
    path = ROOT / "xxpo_lab" / "family.py"
    before = path.read_text()
    after = re.sub(r"^BOOK = \(.*?\)$", f"BOOK = {book_chapters()!r}", before, count=1, flags=re.M)
    if after != before:
        path.write_text(after)
    return after != before


def notebooks() -> list[Path]:
    return sorted((ROOT / "chapters").glob("*.ipynb"))


def sync(path: Path) -> bool:
    """Rewrite one notebook in committed form; True if it changed."""
    before = path.read_text()
    nb = nbformat.reads(before, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    cell = nbformat.v4.new_code_cell(install_cell())
    if code and code[0].source.startswith(INSTALL_MARK):
        code[0].source = cell.source
    else:
        first_code = nb.cells.index(code[0]) if code else len(nb.cells)
        nb.cells.insert(first_code, cell)
    for c in nb.cells:
        c.pop("id", None)
        if c.cell_type == "code":
            c.outputs, c.execution_count = [], None
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata.pop("widgets", None)
    nb.nbformat_minor = 4
    after = nbformat.writes(nb) + "\n"
    if after != before:
        path.write_text(after)
    return after != before


if __name__ == "__main__":
    changed = [p.name for p in notebooks() if sync(p)] + (["xxpo_lab/family.py"] if sync_family() else [])
    print("synced:", ", ".join(changed) if changed else "nothing to change", file=sys.stderr)
