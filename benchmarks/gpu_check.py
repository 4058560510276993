"""`make gpu-check`: execute every chapter on a device (CUDA by default) and report what it measured.

First, one training step of the default config on the CPU and on the device (median time), which tells a Colab
reader which device is faster for these tiny policies. Then for each chapter of _toc.yml, in a fresh kernel: the
wall time, the device's memory high-water mark (CUDA's
max_memory_allocated; on the CPU the process's peak resident set), and every claim the chapter checks
(`interactive.check`), recorded instead of stopping the run (XXPO_CLAIMS_LOG): on the CPU build every claim
holds (the book does not build otherwise), so the report's "claims held" says which directions the device's
runs reproduce. Runs go to a cache of their own, so nothing is loaded from the CPU build.

    python benchmarks/gpu_check.py                      # CUDA, full mode, every chapter -> benchmarks/gpu.md
    python benchmarks/gpu_check.py --device cpu --fast --chapters chapters/00_family.ipynb --out /tmp/gpu.md

The second line is the dry run the tests execute.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import nbformat
import yaml
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
PEAK = """
import json, resource, torch
if torch.cuda.is_available() and torch.device(__import__("os").environ["XXPO_DEVICE"]).type == "cuda":
    peak = torch.cuda.max_memory_allocated() / 2**20
else:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print("XXPO_PEAK_MB", json.dumps(peak))
"""
"""A cell appended to each chapter: the kernel's memory high-water mark (runs inside the kernel's process)."""


def chapters() -> list[Path]:
    """The executable chapters of the table of contents, in order."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [toc["root"]] + [c["file"] for part in toc["parts"] for c in part["chapters"]]
    return [ROOT / f"{f}.ipynb" for f in files if (ROOT / f"{f}.ipynb").exists()]


def run_chapter(path: Path, device: str, fast: bool, cache: Path, timeout: int) -> dict:
    """Execute one chapter; its seconds, peak memory and claims."""
    claims = Path(tempfile.mkstemp(suffix=".jsonl")[1])
    env = {"XXPO_DEVICE": device, "XXPO_CLAIMS_LOG": str(claims), "XXPO_CACHE": str(cache),
           "XXPO_FAST": "1" if fast else "0"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the kernel inherits this process's environment
    nb = nbformat.read(path, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(PEAK))
    start = time.perf_counter()
    error = None
    try:
        NotebookClient(nb, timeout=timeout, kernel_name="python3",
                       resources={"metadata": {"path": str(path.parent)}}).execute()
    except Exception as exc:  # a chapter that fails on the device is a finding, not the end of the check
        error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    seconds = time.perf_counter() - start
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    peak = None
    for output in nb.cells[-1].get("outputs", []):
        for line in output.get("text", "").splitlines():
            if line.startswith("XXPO_PEAK_MB"):
                peak = json.loads(line.split(maxsplit=1)[1])
    records = [json.loads(line) for line in claims.read_text().splitlines() if line.strip()]
    claims.unlink()
    return {"chapter": path.stem, "seconds": seconds, "peak_mb": peak, "claims": len(records),
            "held": sum(r["holds"] for r in records), "failed": [r["claim"] for r in records if not r["holds"]],
            "error": error}


def step_times(devices: list[str], fast: bool, steps: int = 30, warmup: int = 5) -> dict[str, float]:
    """Median seconds of one training step of the default config (chapters' P, G, model) on each device, the
    first `warmup` steps dropped: our policies are tiny, so a GPU step may be bound by kernel launches and lose
    to the CPU. Which is faster decides the default a Colab reader should use."""
    import os

    from xxpo_lab import Config, train

    saved = os.environ.get("XXPO_FAST")
    os.environ["XXPO_FAST"] = "1" if fast else "0"
    out = {}
    try:
        for device in devices:
            hist = train(Config(steps=steps, eval_every=10_000), cache=False, device=device, progress=False)
            times = hist["time/step"].dropna()  # fast mode shrinks the run to a step or two: keep them all
            out[device] = float((times.iloc[warmup:] if len(times) > warmup else times).median())
    finally:
        if saved is None:
            del os.environ["XXPO_FAST"]
        else:
            os.environ["XXPO_FAST"] = saved
    return out


def report(rows: list[dict], device: str, fast: bool, steps: dict[str, float] | None = None) -> str:
    """The markdown report."""
    import torch

    name = torch.cuda.get_device_name() if device.startswith("cuda") and torch.cuda.is_available() else device
    lines = [f"# Every chapter on {name} ({'fast' if fast else 'full'} mode)", "",
             f"`python benchmarks/gpu_check.py --device {device}{' --fast' if fast else ''}`, "
             f"{time.strftime('%Y-%m-%d')}. Claims: the chapter's `check`s that held on this device (all hold on "
             "the CPU build).", "", "| chapter | seconds | peak memory (MB) | claims held | error |",
             "| --- | --- | --- | --- | --- |"]
    for r in rows:
        peak = "–" if r["peak_mb"] is None else f"{r['peak_mb']:.0f}"
        lines.append(f"| {r['chapter']} | {r['seconds']:.1f} | {peak} | {r['held']}/{r['claims']} | "
                     f"{r['error'] or ''} |")
    if steps:
        best = min(steps, key=steps.get)
        lines += ["", "One training step of the default config (median seconds; the lab picks CUDA when present, "
                  "`XXPO_DEVICE=cpu` overrides it):", "", "| device | s / step |", "| --- | --- |"]
        lines += [f"| {d} | {t:.4f} |" for d, t in steps.items()]
        lines += ["", f"Faster here: {best}."]
    failed = [(r["chapter"], c) for r in rows for c in r["failed"]]
    lines += ["", "Claims that did not hold on this device:" if failed else "Every claim held.", ""]
    lines += [f"- {chapter}: {claim}" for chapter, claim in failed]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="torch device the chapters run on (default cuda)")
    parser.add_argument("--fast", action="store_true", help="fast mode (XXPO_FAST=1), for a dry run")
    parser.add_argument("--chapters", nargs="*", type=Path, help="notebooks to run (default: every chapter)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "gpu.md")
    parser.add_argument("--timeout", type=int, default=1200, help="seconds per cell")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            parser.error(f"--device {args.device}: no CUDA device here (use --device cpu for a dry run)")
    cache = Path(tempfile.mkdtemp(prefix="xxpo-gpu-check-"))
    rows = []
    for path in args.chapters or chapters():
        rows.append(run_chapter(path.resolve(), args.device, args.fast, cache, args.timeout))
        r = rows[-1]
        print(f"{r['chapter']}: {r['seconds']:.1f} s, peak {r['peak_mb']} MB, claims {r['held']}/{r['claims']}"
              + (f", {r['error']}" if r["error"] else ""), flush=True)
    steps = step_times(list(dict.fromkeys(["cpu", args.device])), args.fast)
    print("s / step:", steps, flush=True)
    args.out.write_text(report(rows, args.device, args.fast, steps))
    print(f"report: {args.out}")
    return 1 if any(r["error"] for r in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
