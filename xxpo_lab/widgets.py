"""A Colab panel: pick a loss, move the sliders, press Train, watch the curves (needs a live kernel).

    from xxpo_lab.widgets import panel
    panel()                    # or panel(Config(task="addition", loss="dapo"))

ipywidgets is imported only here, so the rest of the package works without it. On the website the
panel is shown as code with a "run in Colab" note: widgets there cannot train.
"""

from __future__ import annotations

from dataclasses import replace

from xxpo_lab.config import Config, ConfigError
from xxpo_lab.losses import LOSSES

LIVE_METRICS = ("reward/mean", "clip/active_frac", "kl/k3", "entropy/mean")


class Panel:
    """The widgets, the runs trained so far (`.runs`: label -> History), and the Train button's handler."""

    def __init__(self, cfg: Config | None = None, redraw_every: int = 10):
        try:
            import ipywidgets as W
        except ImportError as exc:  # the panel is optional; say how to get it
            raise ImportError("the training panel needs ipywidgets: pip install ipywidgets") from exc
        self.base = cfg or Config()
        self.redraw_every = redraw_every
        self.runs = {}
        b = self.base
        style = {"description_width": "110px"}
        self.loss = W.Dropdown(options=list(LOSSES), value=b.loss, description="loss", style=style)
        self.lr = W.FloatLogSlider(value=b.lr, base=10, min=-5, max=-2, step=0.1, description="lr", style=style)
        self.eps_low = W.FloatSlider(value=0.2, min=0.05, max=0.5, step=0.01, description="eps_low", style=style)
        self.eps_high = W.FloatSlider(value=0.2, min=0.05, max=0.5, step=0.01, description="eps_high", style=style)
        self.G = W.IntSlider(value=b.G, min=2, max=32, description="G", style=style)
        self.epochs = W.IntSlider(value=b.epochs, min=1, max=8, description="epochs", style=style)
        self.minibatches = W.Dropdown(options=[d for d in (1, 2, 4, 8, 16) if b.P % d == 0], value=b.minibatches,
                                      description="minibatches", style=style)
        self.staleness = W.IntSlider(value=b.staleness, min=0, max=8, description="staleness", style=style)
        self.steps = W.IntSlider(value=b.steps, min=10, max=500, step=10, description="steps", style=style)
        self.use_loss_eps = W.Checkbox(value=True, description="use the loss's own eps (GSPO, DAPO, ...)")
        self.button = W.Button(description="Train", button_style="primary", icon="play")
        self.status = W.HTML()
        self.plot = W.Output()
        self.button.on_click(self.train)
        controls = W.VBox([self.loss, self.lr, self.use_loss_eps, self.eps_low, self.eps_high, self.G, self.epochs,
                           self.minibatches, self.staleness, self.steps, W.HBox([self.button, self.status])])
        self.widget = W.HBox([controls, self.plot])

    def config(self) -> Config:
        eps = {} if self.use_loss_eps.value else {"eps_low": self.eps_low.value, "eps_high": self.eps_high.value}
        return replace(self.base, loss=self.loss.value, lr=self.lr.value, G=self.G.value, epochs=self.epochs.value,
                       minibatches=self.minibatches.value, staleness=self.staleness.value, steps=self.steps.value,
                       **eps)

    def train(self, _button=None):
        from xxpo_lab.runs import train

        try:
            cfg = self.config()
        except ConfigError as exc:
            self.status.value = f"<b style='color:#b00'>{exc}</b>"
            return
        label = f"{cfg.loss} lr={cfg.lr:.0e} G={cfg.G} K={cfg.epochs * cfg.minibatches} d={cfg.staleness}"
        rows = []
        self.status.value = f"training {label} ..."

        def live(row):
            rows.append(row)
            if len(rows) % self.redraw_every == 0:
                self._draw(label, rows)

        self.runs[label] = train(cfg, progress=False, callback=live)
        self._draw(None, [])
        self.status.value = f"done: {label}"

    def _draw(self, label, rows):
        import io

        import matplotlib.pyplot as plt
        import pandas as pd
        from IPython.display import Image

        from xxpo_lab.plots import curves

        runs = dict(self.runs)
        if rows:
            runs[label + " (live)"] = pd.DataFrame(rows)
        fig = curves(runs, list(LIVE_METRICS), smooth=5, ncols=2)
        png = io.BytesIO()
        fig.savefig(png, format="png")
        plt.close(fig)
        self.plot.outputs = ()  # replace the previous picture (works with or without a live kernel)
        self.plot.append_display_data(Image(data=png.getvalue()))

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)


def panel(cfg: Config | None = None) -> Panel:
    """The training panel for `cfg` (default Config()); display it in a notebook cell."""
    return Panel(cfg)
