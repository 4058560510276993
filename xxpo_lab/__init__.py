"""XXPO Lab: small GPT-2 policies on verifiable tasks, and every policy-optimisation loss of the family.

    from xxpo_lab import Config, train
    hist = train(Config(loss="grpo", steps=100))     # a pandas DataFrame, one row per step

See `python -m xxpo_lab --help` for the command line.
"""

__version__ = "0.1.0"

from xxpo_lab.advantages import ADVANTAGES
from xxpo_lab.config import Config, ConfigError, field_docs, pick, resolve, sized
from xxpo_lab.diagnostics import GLOSSARY
from xxpo_lab.loop import NonFiniteError
from xxpo_lab.losses import LOSSES
from xxpo_lab.runs import History, compare, run_many, train
from xxpo_lab.store import StoreError
from xxpo_lab.tables import summary, updates
from xxpo_lab.tasks import TASKS, make_task

__all__ = [
    "ADVANTAGES", "GLOSSARY", "LOSSES", "TASKS", "Config", "ConfigError", "History", "NonFiniteError", "StoreError",
    "compare", "field_docs", "make_task", "pick", "resolve", "run_many", "sized", "summary", "train", "updates",
]
