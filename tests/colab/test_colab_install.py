"""Layer 5: the Colab path. A chapter notebook runs in a fresh virtual environment that has torch (as
Colab does) but not xxpo_lab; its first cell installs the package, here from a local clone of the
repository instead of the network, and the notebook executes top to bottom.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "chapters"))
import _sync  # noqa: E402

NOTEBOOK = ROOT / "chapters" / "00_family.ipynb"
WHEELS = Path("/opt/wheels")


def _run(cmd, **kw):
    out = subprocess.run(cmd, capture_output=True, text=True, **kw)
    assert out.returncode == 0, f"{cmd} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out


def _local_clone(tmp: Path) -> Path:
    """A git repository holding the working tree as it is (what a push would publish), on the configured branch."""
    _, branch = _sync.repository()
    files = _run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT).stdout.split()
    clone = tmp / "clone"
    for name in files:
        src = ROOT / name
        if src.is_file():
            dst = clone / name
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_bytes(src.read_bytes())
    _run(["git", "init", "-q", "-b", branch], cwd=clone)
    _run(["git", "add", "-A"], cwd=clone)
    _run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "snapshot"], cwd=clone)
    return clone


def test_notebook_installs_the_package_and_runs_in_a_fresh_environment(tmp_path):
    clone = _local_clone(tmp_path)
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)])
    py = venv / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    wheels = ["--find-links", str(WHEELS)] if WHEELS.exists() else []
    # what Colab already has: torch, a kernel and a notebook runner (not xxpo_lab)
    _run([str(py), "-m", "pip", "install", "-q", *wheels, "torch==2.13.0", "ipykernel", "nbclient", "nbformat"],
         env=env)
    probe = subprocess.run([str(py), "-c", "import importlib.util as u; print(u.find_spec('xxpo_lab'))"],
                           capture_output=True, text=True, env=env, cwd=tmp_path)
    assert probe.stdout.strip() == "None", "xxpo_lab must not be importable before the install cell runs"

    nb = nbformat.read(NOTEBOOK, as_version=4)
    install = next(c for c in nb.cells if c.cell_type == "code")
    url, branch = _sync.repository()
    assert f'XXPO_REPO = "git+{url}@{branch}"' in install.source
    install.source = install.source.replace(f"git+{url}@{branch}", f"git+file://{clone}@{branch}")
    local = tmp_path / "colab.ipynb"
    nbformat.write(nb, local)

    runner = ("import sys, nbformat\nfrom nbclient import NotebookClient\n"
              "nb = nbformat.read(sys.argv[1], as_version=4)\n"
              "NotebookClient(nb, timeout=900, kernel_name='python3').execute()\n"
              "nbformat.write(nb, sys.argv[1])\n")
    run_env = env | {"XXPO_FAST": "1", "XXPO_CACHE": str(tmp_path / "cache"), "MPLBACKEND": "Agg"}
    _run([str(py), "-c", runner, str(local)], env=run_env, cwd=tmp_path, timeout=1500)

    executed = json.loads(local.read_text())
    errors = [o for c in executed["cells"] if c["cell_type"] == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors
    where = _run([str(py), "-c", "import xxpo_lab; print(xxpo_lab.__file__)"], env=env, cwd=tmp_path).stdout.strip()
    assert where.startswith(str(venv)), f"xxpo_lab imported from {where}, not from the fresh environment"
