"""Which code a cached result depends on: the hash of exactly the definitions a run can execute.

A cached run (or warm start, or table) is keyed by its config and by `code_hash(roots, payload)`:
starting from its entry points (`loop.run`, `policy.warm_start`, ...), we follow every name a
definition uses, across the package's modules, and hash the definitions reached, as syntax trees
without docstrings (so comments, docstrings and layout never retrain anything). Two places are
followed by name instead of whole:

- the registries (`LOSSES`, `ADVANTAGES`, `TASKS`, ...) contribute only the entries the payload names
  under the config field that picks them (`loss="grpo"`: GRPO's entry and what it uses, not DAPO's;
  a payload that names none of them under that field gets the whole registry);
- `config.py`, `store.py` and this module are not followed: the resolved config is in the key itself,
  and the cache's own plumbing cannot change a number.

So editing a plot, a chapter helper or the command line, or adding a loss, keeps every other cached
run; editing anything a run executes retrains exactly the runs that execute it.
"""

from __future__ import annotations

import ast
import hashlib
from functools import cache
from pathlib import Path

PACKAGE = "xxpo_lab"
NOT_FOLLOWED = {"config", "store", "codekey"}
"""Modules whose code cannot change a cached number (the resolved config is in every key)."""
REGISTRIES = {("losses", "LOSSES"): "loss", ("advantages", "ADVANTAGES"): "adv", ("advantages", "CRITIC_KIND"): "adv",
              ("tasks", "TASKS"): "task", ("tasks", "DEFAULT_DIFFICULTY"): "task",
              ("blocks", "KL_ESTIMATORS"): "kl_estimator"}
"""Dicts keyed by a name a config field gives: only the entries the payload names under that field are hashed."""


@cache
def package_sources() -> dict[str, str]:
    """{module: source} of every module of the package."""
    root = Path(__file__).parent
    return {p.stem: p.read_text() for p in sorted(root.glob("*.py"))}


def code_hash(roots: list[str], payload=None, sources: dict[str, str] | None = None) -> str:
    """Hash of the definitions reachable from `roots` ('module.name'), registries cut to the names in `payload`.

    `payload` is the JSON-able description of the cached thing (a config dict, a table's parameters): the
    names it gives under 'loss', 'adv', 'task' and 'kl_estimator', at any depth, select the registries'
    entries. `sources` replaces the package's files (tests edit a copy of them). Returns 16 hex digits.
    """
    index = _index(tuple(sorted((sources or package_sources()).items())))
    todo = [tuple(r.split(".", 1)) for r in roots]
    seen: dict[tuple[str, str], str] = {}
    while todo:
        module, name = todo.pop()
        if (module, name) in seen or module in NOT_FOLLOWED or name not in index[module][0]:
            continue
        node = index[module][0][name]
        if (module, name) in REGISTRIES:
            names = _named(payload, REGISTRIES[module, name])
            entries = [(k, v) for k, v in zip(node.value.keys, node.value.values) if not names or k.value in names]
            seen[(module, name)] = repr([(k.value, ast.dump(v)) for k, v in entries])
            todo += _uses([v for _, v in entries], module, index)
        else:
            seen[(module, name)] = ast.dump(node)
            todo += _uses([node], module, index)
    h = hashlib.sha256()
    for (module, name), dump in sorted(seen.items()):
        h.update(f"{module}.{name}:{dump}\n".encode())
    return h.hexdigest()[:16]


@cache
def _index(sources: tuple[tuple[str, str], ...]) -> dict[str, tuple[dict[str, ast.AST], dict[str, tuple]]]:
    """Per module: its top-level definitions by name (docstrings dropped), and its imports from the package
    (local name -> (module, name), or (module, None) for a module imported whole)."""
    out = {}
    for module, source in sources:
        defs, imports = {}, {}
        for node in _without_docstrings(ast.parse(source)).body:
            if isinstance(node, ast.FunctionDef | ast.ClassDef):
                defs[node.name] = node
            elif isinstance(node, ast.Assign | ast.AnnAssign):
                for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                    for n in [target, *getattr(target, "elts", [])]:  # X = ... and X, Y = ...
                        if isinstance(n, ast.Name):
                            defs[n.id] = node
            elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == PACKAGE:
                inner = node.module.split(".", 1)[1] if "." in node.module else None
                for alias in node.names:
                    local = alias.asname or alias.name
                    imports[local] = (inner, alias.name) if inner else (alias.name, None)
        out[module] = (defs, imports)
    return out


def _uses(nodes: list[ast.AST], module: str, index) -> list[tuple[str, str]]:
    """(module, name) of every package definition the nodes refer to: by name, as module.attribute, or by
    an import inside a function."""
    defs, imports = index[module]
    found = []
    for node in nodes:
        for n in ast.walk(node):
            if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id in imports \
                    and imports[n.value.id][1] is None:
                found.append((imports[n.value.id][0], n.attr))  # dg.update_metrics
            elif isinstance(n, ast.Name) and n.id in defs:
                found.append((module, n.id))
            elif isinstance(n, ast.Name) and n.id in imports and imports[n.id][1] is not None:
                found.append(imports[n.id])
            elif isinstance(n, ast.ImportFrom) and (n.module or "").startswith(PACKAGE + "."):
                found += [(n.module.split(".", 1)[1], a.name) for a in n.names]
    return found


def _without_docstrings(tree: ast.Module) -> ast.Module:
    """The syntax tree without docstrings and bare strings (Config's field docs); comments are never in it."""
    for node in ast.walk(tree):
        for name in ("body", "orelse", "finalbody"):
            body = getattr(node, name, None)
            if isinstance(body, list) and body and isinstance(body[0], ast.stmt):
                kept = [s for s in body if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant)
                                                and isinstance(s.value.value, str))]
                setattr(node, name, kept or [ast.Pass()])
    return tree


def _named(payload, field: str) -> set[str]:
    """The names a JSON-able payload gives under the key `field`, at any depth (a string or a list of them)."""
    found = set()
    if isinstance(payload, dict):
        for key, value in payload.items():
            if key == field and isinstance(value, str | list | tuple):
                found |= {value} if isinstance(value, str) else {v for v in value if isinstance(v, str)}
            found |= _named(value, field)
    elif isinstance(payload, list | tuple):
        for value in payload:
            found |= _named(value, field)
    return found
