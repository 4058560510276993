"""`make gpu-check` runs end to end as a dry run on the CPU: a chapter executes in a fresh kernel with its
claims recorded, and the report names the chapter, its time, its memory and the claims that held."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_gpu_check_dry_run_on_cpu_writes_its_report(tmp_path):
    out = tmp_path / "gpu.md"
    status = gpu_check().main(["--device", "cpu", "--fast", "--chapters", str(ROOT / "chapters" / "00_family.ipynb"),
                               "--out", str(out)])
    text = out.read_text()
    assert status == 0, text
    row = next(line for line in text.splitlines() if line.startswith("| 00_family |"))
    seconds, peak, claims = (cell.strip() for cell in row.split("|")[2:5])
    assert float(seconds) > 0 and float(peak) > 0
    held, total = map(int, claims.split("/"))
    assert total >= 1 and 0 <= held <= total  # fast mode cannot support every claim: they are counted, not raised
    failing = text.split("Claims that did not hold on this device:")[-1] if held < total else ""
    assert failing.count("\n- 00_family: ") == total - held
    step = next(line for line in text.splitlines() if line.startswith("| cpu |"))
    assert float(step.split("|")[2]) > 0 and "Faster here: cpu." in text


def test_the_gpu_check_lists_every_chapter_of_the_toc():
    names = [p.stem for p in gpu_check().chapters()]
    assert names[0] == "00_family" and "10_sampler_is_not_the_trainer" in names and "a2_metrics" in names


def test_asking_for_cuda_without_one_says_so(capsys):
    import torch

    if torch.cuda.is_available():
        return  # the real check runs there
    with pytest.raises(SystemExit):
        gpu_check().main(["--device", "cuda"])
    assert "no CUDA device here (use --device cpu for a dry run)" in capsys.readouterr().err
