"""Showing results in the book and on Colab: interactive plotly figures and numbers glued into prose.

On the website (a book build sets XXPO_BOOK=1) a plotly figure is written as plain HTML that uses
the plotly.js the site serves itself, without plotly's own MathJax (the page has one already); on
Colab and in Jupyter it goes through plotly's normal renderer.
"""

from __future__ import annotations

import os


def in_book_build() -> bool:
    """True while Jupyter Book executes the notebook for the website."""
    return os.environ.get("XXPO_BOOK") == "1"


def show(fig) -> None:
    """Display a plotly figure: kernel-free HTML in the book, the normal renderer elsewhere."""
    if in_book_build():
        from IPython.display import HTML, display

        display(HTML(fig.to_html(include_plotlyjs=False, include_mathjax=False, full_html=False,
                                 config={"displaylogo": False, "responsive": True})))
    else:
        fig.show()


def glue(name: str, value, fmt: str = "") -> None:
    """Make `value` available to the prose as {glue:text}`name` (myst-nb); elsewhere print it.

    Numbers in the chapters' text come from here, from the run on the page, never typed by hand.
    """
    try:
        from myst_nb import glue as myst_glue
    except ImportError:  # Colab and plain Jupyter: the prose shows the role, the output shows the number
        print(f"{name} = {format(value, fmt)}")
        return
    myst_glue(name, value, display=False)
