"""The Colab panel trains on a click; the package imports without ipywidgets."""

import subprocess
import sys

from xxpo_lab.widgets import panel


def test_panel_trains_when_train_is_clicked(tiny):
    p = panel(tiny)
    p.loss.value = "dapo"
    p.steps.value = 10
    p.redraw_every = 2
    p.button.click()
    assert list(p.runs) == ["dapo lr=3e-04 G=4 K=1 d=0"]
    hist = p.runs["dapo lr=3e-04 G=4 K=1 d=0"]
    assert hist.attrs["config"]["eps_high"] == 0.28 and len(hist) == 11
    assert p.plot.outputs and p.status.value.startswith("done")


def test_panel_reports_bad_values_instead_of_training(tiny):
    p = panel(tiny)
    p.use_loss_eps.value = False
    p.G.value = 2
    p.loss.value = "grpo"
    p.staleness.value = 1
    cfg = p.config()
    assert cfg.eps_low == 0.2 and cfg.staleness == 1
    p.base = tiny.__class__(**(tiny.__dict__ | {"P": 4}))
    p.minibatches.options = [1, 2, 3]
    p.minibatches.value = 3  # does not divide P = 4
    p.button.click()
    assert "Config.minibatches = 3" in p.status.value and not p.runs


def test_package_works_without_ipywidgets():
    code = ("import sys; sys.modules['ipywidgets'] = None\n"
            "import xxpo_lab\n"
            "from xxpo_lab.widgets import panel\n"
            "try:\n    panel()\nexcept ImportError as e:\n    print('ImportError:', e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "pip install ipywidgets" in out.stdout
