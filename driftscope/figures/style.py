"""Print-ready matplotlib settings and small drawing helpers shared by every figure.

Use :func:`paper_style` (a context manager) or :func:`set_style`: a single-column width of
3.4 in, fonts of 7-8 pt, seaborn's colour-blind-safe palette, TrueType (fonttype 42) fonts in
PDFs and tight bounding boxes.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import matplotlib as mpl
import matplotlib.pyplot as plt
import matplotlib.ticker as mticker
import seaborn as sns
from matplotlib import rcsetup
from matplotlib.axes import Axes

__all__ = ["COLUMN_WIDTH", "DPI", "FIGSIZE", "PlainLogFormatter", "paper_style", "set_style"]

COLUMN_WIDTH = 3.4  # inches, one column of a two-column paper
FIGSIZE = (COLUMN_WIDTH, 2.3)
DPI = 200

PAPER_RC: dict[str, Any] = {
    "figure.figsize": FIGSIZE,
    "figure.dpi": 100,
    "savefig.dpi": DPI,
    "savefig.bbox": "tight",
    "savefig.pad_inches": 0.02,
    "pdf.fonttype": 42,
    "ps.fonttype": 42,
    "font.size": 8,
    "axes.titlesize": 8,
    "axes.labelsize": 8,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "legend.fontsize": 7,
    "legend.title_fontsize": 7,
    "figure.titlesize": 8,
    "axes.linewidth": 0.6,
    "xtick.major.width": 0.6,
    "ytick.major.width": 0.6,
    "xtick.major.size": 2.5,
    "ytick.major.size": 2.5,
    "xtick.minor.size": 1.5,
    "ytick.minor.size": 1.5,
    "lines.linewidth": 1.2,
    "lines.markersize": 3.5,
    "patch.linewidth": 0.5,
    "legend.frameon": False,
    "legend.handlelength": 1.4,
    "legend.borderaxespad": 0.3,
    "axes.titlepad": 4.0,
}


def _style_rc() -> dict[Any, Any]:  # rc keys: matplotlib's Literal RcKeyType
    rc: dict[Any, Any] = dict(sns.axes_style("ticks"))
    rc.update(PAPER_RC)
    rc["axes.prop_cycle"] = rcsetup.cycler(color=sns.color_palette("colorblind"))
    return rc


@contextmanager
def paper_style() -> Iterator[None]:
    """Print-ready matplotlib settings inside a ``with`` block (restored afterwards).

    Single-column figures (3.4 in wide), 7-8 pt fonts, the colour-blind-safe ``colorblind``
    palette, TrueType fonts in PDF (fonttype 42) and tight bounding boxes when saving.
    """
    with mpl.rc_context(_style_rc()):
        yield


def set_style() -> None:
    """Apply :func:`paper_style`'s settings globally (e.g. at the top of a notebook)."""
    mpl.rcParams.update(_style_rc())


class PlainLogFormatter(mticker.LogFormatter):
    """Log-axis tick labels as plain numbers ("0.5", "20") instead of "2x10^1"; matplotlib
    still decides which minor ticks get a label."""

    def __call__(self, x: float, pos: int | None = None) -> str:
        text = super().__call__(x, pos)
        return f"{x:g}" if text else ""


def plain_log_ticks(axis: Any) -> None:
    axis.set_major_formatter(PlainLogFormatter(labelOnlyBase=False))
    axis.set_minor_formatter(PlainLogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.5)))


@contextmanager
def quiet_seaborn() -> Iterator[None]:
    """Silence deprecation notices that seaborn 0.13 raises inside newer matplotlib."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, module="seaborn")
        warnings.filterwarnings("ignore", category=PendingDeprecationWarning, module="seaborn")
        warnings.filterwarnings("ignore", message=".*vert: bool was deprecated.*")
        yield


def palette(n: int) -> list[Any]:
    return sns.color_palette("colorblind", max(n, 1))


def new_ax(ax: Axes | None, figsize: tuple[float, float] = FIGSIZE) -> Axes:
    if ax is not None:
        return ax
    _, ax = plt.subplots(figsize=figsize)
    return ax
