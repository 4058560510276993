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


def _drop_duplicate_scripts(app, pagename, templatename, context, doctree):
    """sphinx-thebe registers its inline config twice under Jupyter Book, and a `const` declared twice
    is a JavaScript error on every page; keep the first copy of each script."""
    seen, unique = set(), []
    for script in context.get("script_files", []):
        # the two copies differ only in filename (None vs ''): compare what the page would contain
        key = (getattr(script, "filename", script) or "", tuple(sorted(getattr(script, "attributes", {}).items())))
        if key not in seen:
            seen.add(key)
            unique.append(script)
    context["script_files"] = unique


def setup(app):
    app.add_js_file("plotly.min.js")
    app.connect("build-finished", _copy_plotly)
    app.connect("html-page-context", _drop_duplicate_scripts)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
