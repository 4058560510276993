"""Files on disk: the cache folder, atomic writes, safe loads and cache keys.

Warm starts, finished runs and checkpoints go through here. A file that is corrupt or was written
for something else raises `StoreError` naming the file and what to do; it is never silently replaced.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import torch


class StoreError(RuntimeError):
    """A cache or checkpoint file is unreadable or belongs to another run."""


def cache_dir() -> Path:
    """Where warm starts and finished runs are cached: $XXPO_CACHE, else ~/.cache/xxpo_lab."""
    return Path(os.environ.get("XXPO_CACHE", Path.home() / ".cache" / "xxpo_lab"))


def key_of(payload: dict) -> str:
    """A stable key for a JSON-able description (config, device, code hash)."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:20]


def atomic_write(path: Path, write) -> None:
    """Call write(tmp_path), then move the file into place, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_torch(obj, path: Path) -> None:
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def load_torch(path: Path, what: str) -> dict:
    """Load a file written by save_torch with weights_only=True; a broken file raises StoreError."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any failure to read is reported with the file and the remedy
        raise StoreError(f"cannot read the {what} file {path}: {type(exc).__name__}: {exc}. "
                         f"Delete the file to rebuild it.") from exc


def check_meta(meta: dict, expected: dict, path: Path, what: str) -> None:
    """Raise StoreError if a loaded file's metadata does not match what the caller asked for."""
    diff = {k: (meta.get(k), v) for k, v in expected.items() if meta.get(k) != v}
    if diff:
        raise StoreError(f"the {what} file {path} was written for something else "
                         f"(field: (in file, expected) = {diff}). Delete it or choose another path.")
