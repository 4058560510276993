"""The lab's losses inside production trainers. Each integration is an optional extra: importing `xxpo_lab`
never imports TRL or verl, and importing an integration without its extra says which pip command installs it.

    xxpo_lab.integrations.trl    pip install "xxpo-lab[trl]"
"""

from __future__ import annotations

import importlib


def require(module: str, extra: str):
    """Import `module`, or fail with the pip command of the extra that provides it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(f"xxpo_lab.integrations.{extra} needs {module!r}, which is not installed: "
                          f'pip install "xxpo-lab[{extra}]"') from exc
