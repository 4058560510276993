"""pytest plugin that `make test` loads in every layer (`-p tests.layer`).

A skipped test fails the layer: a dependency a layer needs (TRL for the parity tests, Chromium for the
browser tests) is an install step of `make test`, so a skip can only mean a test that silently stopped
checking. Each layer also writes how many tests it ran, for the summary `make test` prints at the end.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session, exitstatus):
    if hasattr(session.config, "workerinput"):  # an xdist worker: the controller reports
        return
    stats = session.config.pluginmanager.get_plugin("terminalreporter").stats
    counts = {kind: len(stats.get(kind, [])) for kind in ("passed", "failed", "error", "skipped", "xfailed")}
    skipped = stats.get("skipped", []) + stats.get("xfailed", [])
    if skipped:
        print(f"\n{len(skipped)} test(s) skipped; make test treats a skip as a failure:")
        for report in skipped:
            print(f"  {report.nodeid}: {report.longrepr[-1] if isinstance(report.longrepr, tuple) else report.longrepr}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    layer, out = os.environ.get("XXPO_LAYER"), os.environ.get("XXPO_COUNTS")
    if layer and out:
        line = f"{layer}: " + ", ".join(f"{n} {kind}" for kind, n in counts.items() if n or kind == "passed")
        with Path(out).open("a") as f:
            f.write(line + "\n")
