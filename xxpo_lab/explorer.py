"""The loss explorer: each registered loss as a function of the ratio r, computed by the loss itself.

For one response of length L whose tokens all have ratio r against the proximal policy and advantage
A = +1 or -1, we evaluate the package's own loss function and differentiate it with autograd:

    objective   J(r) = -loss                       (what the update increases)
    weight      w(r) = (∂J/∂logp_t) / A             (the factor on A·∇logp of one token)

w = 0 is a token whose gradient the loss zeroed (shaded). The website figure precomputes every curve
for every slider position and switches between them in the browser; no formula is written twice.
Book: appendix C.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch
from torch.func import grad, vmap

from xxpo_lab.batch import Batch
from xxpo_lab.config import Config, resolve
from xxpo_lab.losses import LOSSES

R_GRID = np.round(np.linspace(0.05, 3.0, 119), 4)
T_MAX = 16
PARAMS = {  # slider name -> (Config field, values, default index)
    "eps_low": ("eps_low", [0.0003, 0.05, 0.1, 0.2, 0.28, 0.4], 3),
    "eps_high": ("eps_high", [0.0003, 0.05, 0.1, 0.2, 0.28, 0.4], 3),
    "dual clip c": ("dual_clip_c", [0.0, 2.0, 3.0, 5.0], 0),
    "tau_pos": ("tau_pos", [0.5, 1.0, 2.0, 5.0, 10.0], 1),
    "tau_neg": ("tau_neg", [0.5, 1.05, 2.0, 5.0, 10.0], 1),
    "length L": ("L", [1, 4, 16], 0),
}
SWITCHES = ("dual_clip_c",)
"""Sliders that are a loss's optional switch (Loss.switches), not a parameter every loss reads."""
SHOWN = ("pg", "ppo", "gspo", "sapo", "cispo", "gmpo")
"""Losses drawn when the explorer opens; the legend toggles the others."""
NOT_DRAWN = {
    "dppo_tv": "its trust region bounds p - p_prox, so its curve over r changes with the token's probability "
               "(`trust_region` draws it over p_prox)",
    "dppo_kl": "its trust region bounds the binary KL of the token's probability (`trust_region` draws it)",
    "m2po": "its mask is a statistic of the whole batch, not a function of one token's ratio",
}
"""Registered losses the explorer leaves out, and why."""
DRAWN = tuple(name for name in LOSSES if name not in NOT_DRAWN)
"""The losses the explorer draws over r."""
P_GRID = np.unique(np.concatenate([np.geomspace(1e-4, 0.5, 1000), 1.0 - np.geomspace(1e-4, 0.5, 1000)]))
"""New probabilities p at which `trust_region` reads the clip flags: log-spaced towards 0 and towards 1."""


def loss_curves(name: str, sign: float, params: dict) -> tuple[np.ndarray, np.ndarray]:
    """(J(r), w(r)) on R_GRID for the loss `name`, advantage sign, and parameter values (incl. 'L')."""
    L = int(params.get("L", 1))
    fields = {k: v for k, v in params.items() if k != "L"}
    cfg = resolve(Config(loss=name, T_max=T_MAX, **fields))
    f64 = torch.float64
    b = Batch.of(torch.ones(1, L, dtype=f64), adv=torch.full((1, L), sign, dtype=f64),
                 prox_logp=torch.zeros(1, L, dtype=f64),
                 version_gap=torch.ones(1, dtype=torch.long))
    fn = LOSSES[name].fn

    def objective(logp_tokens):  # [L] -> scalar
        return -fn(logp_tokens[None], b, cfg)[0]

    logp = torch.log(torch.tensor(R_GRID, dtype=f64))[:, None]
    logp = logp.expand(-1, L).contiguous()  # [n, L]: all L tokens at ratio r
    J = vmap(objective)(logp)
    w = vmap(grad(objective))(logp)[:, 0] / sign
    return J.numpy(), w.numpy()


def trust_region(
    name: str, p_prox: float, params: dict | None = None
) -> tuple[float, float]:
    """How far a token's probability may move before the loss `name` stops pushing it: (lowest p for a token
    with A < 0, highest p for one with A > 0), for a token whose anchor probability is p_prox.

    Read off the loss's own clip flags (LossInfo.clip_low / clip_high) on a grid of new probabilities p
    (P_GRID): the ratio clip of PPO/GRPO allows p_prox·(1 ± eps), DPPO-TV p_prox ± δ, DPPO-KL the p where
    the token's binary KL reaches δ. 0 or 1 where the loss never stops the token. Book: ch. 10.
    """
    cfg = resolve(Config(loss=name, **(params or {})))
    f64, n = torch.float64, len(P_GRID)
    prox = torch.full((n, 1), float(np.log(p_prox)), dtype=f64)
    logp = torch.log(torch.tensor(P_GRID, dtype=f64))[:, None]
    bounds = []
    for sign in (-1.0, 1.0):
        adv, ones = torch.full((n, 1), sign, dtype=f64), torch.ones(n, 1, dtype=f64)
        b = Batch.of(ones, adv=adv, prox_logp=prox, behav_logp=prox)
        _, info = LOSSES[name].fn(logp, b, cfg)
        stopped = (info.clip_low if sign < 0 else info.clip_high)[:, 0].numpy()
        if sign < 0:
            bounds.append(float(P_GRID[stopped].max()) if stopped.any() else 0.0)
        else:
            bounds.append(float(P_GRID[stopped].min()) if stopped.any() else 1.0)
    return bounds[0], bounds[1]


def _defaults() -> dict:
    return {field: values[default] for field, values, default in PARAMS.values()}


def _dependencies(name: str, sign: float) -> list[str]:
    """The sliders that change this loss's curves for this advantage sign (checked one at a time; a switch
    the loss does not honour, such as dual clip for SAPO, is not tried)."""
    base = _defaults()
    ref = loss_curves(name, sign, base)
    deps = []
    for slider, (field, values, _) in PARAMS.items():
        if field in SWITCHES and field not in LOSSES[name].switches:
            continue
        for v in values:
            cur = loss_curves(name, sign, base | {field: v})
            if not all(np.allclose(a, c, equal_nan=True) for a, c in zip(ref, cur)):
                deps.append(slider)
                break
    return deps


def _rounded(x: np.ndarray) -> tuple:
    return tuple(None if not np.isfinite(v) else round(float(v), 4) for v in x)


def explorer_tables(losses=None) -> dict:
    """Every curve of every loss at every relevant slider position.

    Returns {"pool": [unique curves], "losses": {loss: {sign: {"deps", "sizes", "curves"}}}}, where each
    entry of "curves" holds the pool indices of (J, w, shaded J) for one combination of its sliders.
    Many losses share curves (GRPO, BNPO, DAPO and PPO coincide for one response), so the pool is small.
    """
    pool, where = [], {}

    def intern(curve: tuple) -> int:
        if curve not in where:
            where[curve] = len(pool)
            pool.append(curve)
        return where[curve]

    tables = {}
    for name in list(losses or DRAWN):
        tables[name] = {}
        for sign in (1.0, -1.0):
            deps = _dependencies(name, sign)
            curves = []
            for combo in itertools.product(*(range(len(PARAMS[d][1])) for d in deps)):
                params = _defaults() | {PARAMS[d][0]: PARAMS[d][1][i] for d, i in zip(deps, combo)}
                J, w = loss_curves(name, sign, params)
                shade = np.where(np.abs(w) < 1e-9, J, np.nan)
                curves.append([intern(_rounded(J)), intern(_rounded(w)), intern(_rounded(shade))])
            tables[name][sign] = {"deps": deps, "sizes": [len(PARAMS[d][1]) for d in deps], "curves": curves}
    return {"pool": pool, "losses": tables}


def loss_explorer(losses=None):
    """A plotly figure: J(r) and w(r) for A > 0 and A < 0, one slider per parameter, legend = loss selector.

    Show it with `interactive.show(fig)`; on the website the sliders work without a kernel (the figure
    carries every precomputed curve and a few lines of JavaScript that pick the right one).
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    from xxpo_lab.plots import color_of, rgba

    tables = explorer_tables(losses)
    fig = make_subplots(rows=2, cols=2, shared_xaxes=True, vertical_spacing=0.08, horizontal_spacing=0.07,
                        subplot_titles=("objective J(r), A > 0", "objective J(r), A < 0",
                                        "gradient weight w(r), A > 0", "gradient weight w(r), A < 0"))
    dynamic = []  # (trace index, loss, sign, which curve)
    for name in tables["losses"]:
        color = color_of(name)
        visible = True if name in SHOWN else "legendonly"
        for col, sign in ((1, 1.0), (2, -1.0)):
            shade = {"fill": "tozeroy", "line": {"width": 0}, "hoverinfo": "skip", "fillcolor": rgba(color, 0.15)}
            for row, kind, extra in ((1, 2, shade),
                                     (1, 0, {"line": {"width": 2}}), (2, 1, {"line": {"width": 2}})):
                fig.add_trace(go.Scatter(x=R_GRID, name=name, legendgroup=name, visible=visible,
                                         showlegend=(col == 1 and kind == 0), mode="lines",
                                         line_color=color, **extra), row=row, col=col)
                dynamic.append((len(fig.data) - 1, name, sign, kind))
    _set_initial(fig, tables, dynamic)
    sliders = []
    for k, (slider, (_, values, default)) in enumerate(PARAMS.items()):
        sliders.append({"name": slider, "active": default, "currentvalue": {"prefix": f"{slider} = "},
                        "x": 0.0 if k % 2 == 0 else 0.52, "len": 0.46, "y": -0.1 - 0.2 * (k // 2),
                        "pad": {"t": 10, "b": 0},
                        "steps": [{"label": str(v), "value": str(j), "method": "skip", "args": []}
                                  for j, v in enumerate(values)]})
    fig.update_layout(sliders=sliders, height=1080, margin={"t": 150, "b": 330, "l": 50, "r": 20},
                      legend={"orientation": "h", "x": 0, "y": 1.07, "yanchor": "bottom"}, hovermode="x unified",
                      title={"text": "Loss explorer: click a loss in the legend to overlay it; move the sliders",
                             "y": 0.995, "x": 0.01})
    fig.update_xaxes(title_text="ratio r = π_θ / π_prox", row=2)
    fig.layout.meta = {"xxpo_explorer": _js_tables(tables, dynamic)}
    return fig


def _set_initial(fig, tables, dynamic) -> None:
    defaults = {slider: default for slider, (_, _, default) in PARAMS.items()}
    for idx, name, sign, kind in dynamic:
        fig.data[idx].y = tables["pool"][_pick(tables["losses"][name][sign], defaults)[kind]]


def _pick(table: dict, active: dict) -> list:
    k = 0
    for dep, size in zip(table["deps"], table["sizes"]):
        k = k * size + active[dep]
    return table["curves"][k]


def _js_tables(tables, dynamic) -> dict:
    losses = tables["losses"]
    return {"sliders": list(PARAMS), "pool": tables["pool"], "traces": [
        {"index": idx, "kind": kind, "deps": [list(PARAMS).index(d) for d in losses[name][sign]["deps"]],
         "sizes": losses[name][sign]["sizes"], "curves": losses[name][sign]["curves"]}
        for idx, name, sign, kind in dynamic]}


EXPLORER_JS = """
(function () {
  var gd = document.getElementById('{plot_id}');
  var T = gd.layout.meta.xxpo_explorer;
  var active = gd.layout.sliders.map(function (s) { return s.active || 0; });
  gd.on('plotly_sliderchange', function (e) {
    active[T.sliders.indexOf(e.slider.name)] = parseInt(e.step.value, 10);
    var ys = [], idx = [];
    T.traces.forEach(function (t) {
      var k = 0;
      t.deps.forEach(function (d, j) { k = k * t.sizes[j] + active[d]; });
      ys.push(T.pool[t.curves[k][t.kind]]);
      idx.push(t.index);
    });
    Plotly.restyle(gd, {y: ys}, idx);
  });
})();
"""
"""Picks precomputed curves when a slider moves (a table lookup; every value comes from the losses)."""


def show_explorer(losses=None) -> None:
    """Build the explorer and display it (kernel-free on the website; CDN plotly.js on Colab)."""
    from xxpo_lab.interactive import show

    show(loss_explorer(losses), post_script=EXPLORER_JS)


def static_figure(losses=SHOWN, params: dict | None = None):
    """The same curves as a matplotlib figure at fixed parameter values (for readers without JavaScript)."""
    import matplotlib.pyplot as plt

    from xxpo_lab.plots import color_of

    params = _defaults() | (params or {})
    fig, axes = plt.subplots(2, 2, figsize=(11, 6.4), sharex=True)
    for name in losses:
        color = color_of(name)
        for col, sign in ((0, 1.0), (1, -1.0)):
            J, w = loss_curves(name, sign, params)
            axes[0, col].plot(R_GRID, J, color=color, label=name)
            axes[0, col].fill_between(R_GRID, 0, np.where(np.abs(w) < 1e-9, J, np.nan), color=color, alpha=0.2, lw=0)
            axes[1, col].plot(R_GRID, w, color=color, label=name)
    for col, s in ((0, "A > 0"), (1, "A < 0")):
        axes[0, col].set_title(f"objective J(r), {s}")
        axes[1, col].set_title(f"gradient weight w(r), {s}")
        axes[1, col].set_xlabel("ratio r")
    axes[0, 0].legend(fontsize=8, ncol=2)
    shown = ", ".join(f"{k}={v}" for k, v in params.items() if k in ("eps_low", "eps_high", "tau_pos", "tau_neg", "L"))
    fig.suptitle(f"shaded: the loss gives these tokens zero gradient ({shown})", fontsize=10)
    fig.tight_layout()
    return fig


