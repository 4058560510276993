"""Score of the last `make mutate` run, per module, from mutmut's own records (mutants/xxpo_lab/*.meta).

Prints a table and writes it, with every surviving mutant's name, to benchmarks/mutation.json.
`mutmut show NAME` prints a mutant's diff; tests/README.md lists the survivors judged equivalent, with why.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

from mutmut.stats import status_by_exit_code

ROOT = Path(__file__).resolve().parent.parent


def main(out: Path = ROOT / "benchmarks" / "mutation.json") -> None:
    metas = sorted((ROOT / "mutants" / "xxpo_lab").glob("*.py.meta"))
    if not metas:
        sys.exit("no mutants/xxpo_lab/*.meta: run `make mutate` first")
    modules, survivors = {}, []
    for meta in metas:
        codes = json.loads(meta.read_text())["exit_code_by_key"]
        status = Counter(status_by_exit_code[code] for code in codes.values())
        checked = sum(status.values()) - status["not checked"]
        modules[meta.name.removesuffix(".meta")] = dict(status) | {
            "total": len(codes), "score": round(status["killed"] / checked, 4) if checked else None}
        survivors += sorted(k for k, c in codes.items() if status_by_exit_code[c] in ("survived", "no tests", "timeout"))
    total = Counter()
    for stats in modules.values():
        total.update({k: v for k, v in stats.items() if isinstance(v, int)})
    checked = total["total"] - total["not checked"]
    modules["all"] = dict(total) | {"score": round(total["killed"] / checked, 4) if checked else None}
    print(f"{'module':<16}{'mutants':>8}{'killed':>8}{'survived':>9}{'no tests':>9}{'timeout':>8}{'score':>8}")
    for name, s in modules.items():
        score = f"{s['score']:.1%}" if s["score"] is not None else "-"
        print(f"{name:<16}{s['total']:>8}{s.get('killed', 0):>8}{s.get('survived', 0):>9}"
              f"{s.get('no tests', 0):>9}{s.get('timeout', 0):>8}{score:>8}")
    before = json.loads(out.read_text()).get("before") if out.exists() else None  # the recorded baseline stays
    record = {"modules": modules, "survivors": survivors} | ({"before": before} if before else {})
    out.write_text(json.dumps(record, indent=1) + "\n")
    print(f"{len(survivors)} survivors (mutmut show NAME prints one); written to {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
