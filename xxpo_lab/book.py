"""The book's devices: the library's source shown highlighted, the diff between two neighbours, and the
token view (each sampled token coloured by what a loss does to it).

Each returns an object that a notebook displays as HTML with inline styles, so it looks the same on
the website (no kernel, no extra CSS) and on Colab.
"""

from __future__ import annotations

import ast
import difflib
import html
import inspect
import textwrap
from dataclasses import dataclass

import torch
from torch import Tensor

from xxpo_lab.batch import Batch
from xxpo_lab.config import Config
from xxpo_lab.losses import get_loss

WIDTH = 88
"""Longest line of shown source: what fits the book's column (the modules it shows keep code within it)."""
BOX = ("font-family: var(--pst-font-family-monospace, monospace); font-size: 0.75em; line-height: 1.45; "
       "overflow-x: auto; border: 1px solid #ddd; border-radius: 4px; padding: 6px 0; margin: 0.5em 0 1em;")


class Html:
    """An HTML fragment a notebook displays (`_repr_html_`); `.text` is the plain source for tests."""

    def __init__(self, fragment: str, text: str = ""):
        self.fragment, self.text = fragment, text

    def _repr_html_(self) -> str:
        return self.fragment


def _box(inner: str, extra_style: str = "") -> str:
    """The frame of every device: a bordered block that scrolls sideways rather than overflow the page
    (the browser tests fail when it has to)."""
    return f'<div class="xxpo-box" style="{BOX} {extra_style}">{inner}</div>'


# -------------------------------------------------------------------------------------------------
# source and diffs


def source_of(obj, docstring: str = "summary") -> str:
    """The source of a function or class, with its docstring cut to its first paragraph ('summary'), kept
    ('full') or dropped ('none'), so the page shows what the reader needs."""
    src = textwrap.dedent(inspect.getsource(obj))
    if docstring == "full":
        return src
    node = ast.parse(src).body[0]
    first = node.body[0]
    if not (isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str)):
        return src
    lines = src.splitlines()
    indent = " " * first.col_offset
    summary = " ".join(inspect.cleandoc(first.value.value).split("\n\n")[0].split())
    wrapped = textwrap.fill('"""' + summary + '"""', WIDTH, initial_indent=indent, subsequent_indent=indent)
    kept = [] if docstring == "none" else [wrapped]
    return "\n".join(lines[:first.lineno - 1] + kept + lines[first.end_lineno:]) + "\n"


def show_source(*objs, docstring: str = "summary") -> Html:
    """The source of each function or class, highlighted, with line numbers and where it lives."""
    return Html("".join(_code_box(source_of(o, docstring), _where(o)) for o in objs),
                "\n".join(source_of(o, docstring) for o in objs))


def show_diff(parent, child, context: int = 100) -> Html:
    """The lines where two functions differ (docstrings dropped): removed lines red, added lines green,
    the shared lines once. Every algorithm chapter's code section opens with the diff against its parent."""
    a = source_of(parent, "none").splitlines()
    b = source_of(child, "none").splitlines()
    rows, text = [], []
    for line in list(difflib.unified_diff(a, b, lineterm="", n=context))[2:]:
        if line.startswith("@@"):
            continue
        mark, body = line[:1], line[1:]
        color = {"-": "#fde8e8", "+": "#e6f6e6"}.get(mark, "transparent")
        rows.append(f'<div style="background:{color}; white-space: pre; padding: 0 8px">'
                    f'<span style="color:#999; user-select:none">{html.escape(mark or " ")} </span>{_highlight(body)}</div>')
        text.append(line)
    title = f"{_where(parent)} → {_where(child)}: − removed, + added"
    return Html(_box(f'<div style="color:#666; padding: 0 8px 4px">{html.escape(title)}</div>' + "".join(rows)),
                "\n".join(text))


def _where(obj) -> str:
    return f"{obj.__module__}.{obj.__qualname__}"


def _highlight(code: str) -> str:
    """Python source as HTML with inline colours (pygments), no surrounding block."""
    from pygments import highlight
    from pygments.formatters import HtmlFormatter
    from pygments.lexers import PythonLexer

    out = highlight(code, PythonLexer(), HtmlFormatter(noclasses=True, nowrap=True, style="default"))
    return out.rstrip("\n")


def _code_box(code: str, title: str) -> str:
    lines = code.rstrip("\n").split("\n")
    body = "".join(f'<div style="white-space: pre; padding: 0 8px"><span style="color:#aaa; user-select:none; '
                   f'display:inline-block; width:2.2em">{i}</span>{_highlight(line)}</div>'
                   for i, line in enumerate(lines, start=1))
    return _box(f'<div style="color:#666; padding: 0 8px 4px">{html.escape(title)}</div>{body}')


# -------------------------------------------------------------------------------------------------
# the token view


@dataclass
class TokenEffects:
    """What a loss does to each token of a batch: its gradient weight -∂loss/∂logp [B, T] and its status
    [B, T] ('up', 'down', 'clipped' = zero gradient from the clip, 'none' = zero gradient because the
    advantage is 0, 'masked' = not in the loss)."""

    weight: Tensor
    status: list[list[str]]
    ratio: Tensor


def token_effects(loss: str, logp: Tensor, b: Batch, cfg: Config) -> TokenEffects:
    """Run the registered loss `loss` on (logp, b) and read, by autograd, the weight it puts on each token's
    log-probability (positive: pushed up), and from its LossInfo which tokens the clip zeroed or a mask
    dropped. Works for every registered loss: nothing is re-typed."""
    logp = logp.detach().clone().requires_grad_(True)
    value, info = get_loss(loss).fn(logp, b, cfg)
    (grad,) = torch.autograd.grad(value, logp)
    weight = -grad
    clipped = torch.zeros_like(b.mask, dtype=torch.bool)
    if info.clip_low is not None:
        clipped = (info.clip_low | info.clip_high) & (weight.abs() < 1e-12)
    dropped = b.mask == 0
    if info.is_masked is not None:
        dropped = dropped | info.is_masked
    def kind(i: int, t: int) -> str:
        if dropped[i, t]:
            return "masked"
        if clipped[i, t]:
            return "clipped"
        return "up" if weight[i, t] > 0 else "down" if weight[i, t] < 0 else "none"

    status = [[kind(i, t) for t in range(b.mask.shape[1])] for i in range(b.B)]
    return TokenEffects(weight * b.mask, status, info.ratio)


COLORS = {"up": (44, 160, 44), "down": (214, 39, 40)}


def token_view(rows: list[dict], scale: float | None = None) -> Html:
    """Responses with each token coloured by what the loss does to it.

    rows: one dict per response: 'label' (shown on the left), 'tokens' (strings), 'weight' and 'status'
    (per token, from `TokenEffects`), optionally 'ratio'. Green: pushed up, red: pushed down, the shade
    ∝ |weight| (the same `scale` for every row, default the largest |weight|); grey and struck through:
    clipped (zero gradient); outlined: no push (zero advantage); dotted: masked. Hover a token for its
    weight and ratio.
    """
    scale = scale or max((abs(w) for r in rows for w, s in zip(r["weight"], r["status"]) if s != "masked"),
                         default=1.0) or 1.0
    out, text = [], []
    for r in rows:
        cells = []
        for t, (tok, w, s) in enumerate(zip(r["tokens"], r["weight"], r["status"])):
            shown = html.escape(tok.replace(" ", "␣") or "∅")
            tip = f"weight {w:+.4f}" + (f", ratio {r['ratio'][t]:.3f}" if "ratio" in r else "") + f" ({s})"
            if s in COLORS:
                alpha = 0.12 + 0.78 * min(1.0, abs(w) / scale)
                css = f"background: rgba{(*COLORS[s], round(alpha, 3))}"
            elif s == "clipped":
                css = "background: #e0e0e0; color: #777; text-decoration: line-through"
            elif s == "none":
                css = "border: 1px solid #ddd"
            else:
                css = "border: 1px dotted #bbb; color: #aaa"
            cells.append(f'<span title="{tip}" style="{css}; padding: 2px 3px; margin: 0 1px; border-radius: 3px">'
                         f"{shown}</span>")
        out.append(f'<div style="white-space: nowrap; margin: 3px 0"><span style="display:inline-block; '
                   f'min-width: 15em; color:#555">{html.escape(str(r["label"]))}</span>{"".join(cells)}</div>')
        text.append(f"{r['label']}: " + " ".join(f"{tok}[{s}:{w:+.3f}]" for tok, w, s in
                                                zip(r["tokens"], r["weight"], r["status"])))
    legend = ('<div style="color:#666; margin-top: 4px">'
              '<span style="background: rgba(44,160,44,0.6); padding: 0 4px">pushed up</span> '
              '<span style="background: rgba(214,39,40,0.6); padding: 0 4px">pushed down</span> '
              '<span style="background:#e0e0e0; text-decoration: line-through; padding: 0 4px">clipped: zero gradient</span> '
              '<span style="border: 1px solid #ddd; padding: 0 4px">no push (A = 0)</span> '
              '<span style="border: 1px dotted #bbb; padding: 0 4px">masked</span> '
              "(shade ∝ |weight|; hover a token for its numbers)</div>")
    return Html(_box("".join(out) + legend, "padding: 6px 8px;"), "\n".join(text))


def token_rows(tokenizer, b: Batch, effects: TokenEffects, rows: list[int], labels: list[str]) -> list[dict]:
    """The dicts `token_view` draws, for rows `rows` of a batch: each response's tokens as text (EOS shown as
    ⏎), its weights, statuses and ratios, up to its length."""
    out = []
    for i, label in zip(rows, labels):
        n = int(b.lengths[i])
        ids = b.resp_ids[i, :n].tolist()
        tokens = ["⏎" if t == tokenizer.eos_token_id else tokenizer.decode([t]) for t in ids]
        out.append({"label": label, "tokens": tokens, "weight": effects.weight[i, :n].tolist(),
                    "status": effects.status[i][:n], "ratio": effects.ratio[i, :n].tolist()})
    return out


def reuse_views(cfg: Config, seed: int = 0, updates: tuple[int, ...] = (0, -1), responses: int = 4) -> list[dict]:
    """The token view of one batch reused cfg.epochs times (`measure.reuse_one_batch`): `responses` responses
    of the first prompt whose group holds right and wrong answers, the right ones first and as many of each
    as the group allows, at each update in `updates` (-1: the last), labelled 'update u, R = r' and carrying
    'update' and 'reward' for selecting rows. Cached like a run: a chapter's build does not redo the updates."""
    import pandas as pd

    from xxpo_lab.config import to_dict
    from xxpo_lab.measure import reuse_one_batch
    from xxpo_lab.runs import cached_table

    def compute() -> pd.DataFrame:
        state, b, logps = reuse_one_batch(cfg, seed)
        G = state.cfg.G
        share = b.correct.view(-1, G).float().mean(-1)
        mixed = ((share > 0) & (share < 1)).nonzero()
        if len(mixed) == 0:
            raise ValueError(f"reuse_views: no group of seed {seed}'s batch holds both right and wrong answers; "
                             f"try another seed")
        group = int(mixed[0])
        members = range(group * G, (group + 1) * G)
        right = [i for i in members if b.correct[i]]
        wrong = [i for i in members if not b.correct[i]]
        n_right = min(len(right), max(responses // 2, responses - len(wrong)))
        rows = right[:n_right] + wrong[: responses - n_right]
        views = []
        rewards = b.reward[rows].tolist()
        for u in (u % len(logps) for u in updates):
            labels = [f"update {u}, R = {r:.0f}" for r in rewards]
            shown = token_rows(state.tokenizer, b, token_effects(cfg.loss, logps[u], b, state.cfg), rows, labels)
            views += [row | {"update": u, "reward": r} for row, r in zip(shown, rewards)]
        return pd.DataFrame(views)

    payload = {"config": to_dict(cfg), "seed": seed, "updates": list(updates), "responses": responses}
    table = cached_table("reuse-views", payload, compute, code=[reuse_views, reuse_one_batch])

    def plain(v):  # parquet gives numpy values back: plain Python ones become CSS colours and labels
        if isinstance(v, str) or not hasattr(v, "__len__"):  # a label, or a number ('update', 'reward')
            return v.item() if hasattr(v, "item") else v
        return [x.item() if hasattr(x, "item") else x for x in v]

    return [{k: plain(v) for k, v in row.items()} for row in table.to_dict("records")]
