"""Serve the scripts the pages need from the built site itself, taken from installed packages.

plotly.js comes from the plotly Python package (the figures are written without it, see
`xxpo_lab.interactive.show`); MathJax comes from sphinx-mathjax-offline. The site needs no CDN.
"""

import shutil
from pathlib import Path

import plotly


def _copy_plotly(app, exc):
    if exc is None and app.builder.format == "html":
        src = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
        dst = Path(app.outdir) / "_static" / "plotly.min.js"
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)


def setup(app):
    app.add_js_file("plotly.min.js")
    app.connect("build-finished", _copy_plotly)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
