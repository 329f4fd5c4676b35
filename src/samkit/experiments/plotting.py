"""Shared figure helpers: Agg backend, a consistent style, atomic PNG saving."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from samkit._io import atomic_write  # noqa: E402

__all__ = ["plt", "new_figure", "save_figure", "METHOD_STYLE", "method_label", "plot_run", "divergence_marks"]

#: Colours and labels used for the methods in every figure.
METHOD_STYLE: dict[str, dict] = {
    "gd": {"color": "#444444", "label": "GD"},
    "sam": {"color": "#1f77b4", "label": "SAM (normalized)"},
    "usam": {"color": "#d62728", "label": "USAM (unnormalized)"},
}


def method_label(method: str) -> str:
    """Legend label of a method."""
    return METHOD_STYLE.get(method, {}).get("label", method)


def new_figure(ncols: int = 1, nrows: int = 1, width: float = 5.0, height: float = 3.8, **kw):
    """A figure with a grid of axes (``squeeze=False``)."""
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False, **kw)
    return fig, axes


def save_figure(fig, path: Path, dpi: int = 110) -> str:
    """Save ``fig`` as PNG atomically and close it; return the file name."""
    path = Path(path)
    try:
        fig.tight_layout()
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=dpi, format="png"), suffix=".png")
    finally:
        plt.close(fig)
    return path.name


def divergence_marks(n: int, low: float, high: float) -> list[float]:
    """``n`` heights, log-spaced strictly between ``low`` and ``high``, highest first: where :func:`plot_run` puts
    the × of each of ``n`` diverged runs of a panel, so that none hides another.

    >>> divergence_marks(3, 1.0, 1e4)
    [1000.0, 100.0, 10.0]
    """
    return [float(f"{high * (low / high) ** ((i + 1) / (n + 1)):.12g}") for i in range(n)]


def plot_run(
    ax: Any, steps: np.ndarray, values: np.ndarray, *, diverged_at: int, mark: float, label: str, **style: Any
) -> None:
    """Draw one run's curve on a log-y axis.

    A run that diverged at step ``diverged_at`` (``-1``: it did not) is drawn up to that step, then dashed up to
    a × at height ``mark`` (one of :func:`divergence_marks`, above every finite value of the panel), with
    ``"<label> diverged, t=<step>"`` written beside it.
    """
    if diverged_at < 0:
        ax.plot(steps, values, label=label, **style)
        return
    keep = (steps < diverged_at) & np.isfinite(values)
    style = {**style, "ls": "--"}
    ax.plot([*steps[keep], diverged_at], [*values[keep], mark], label=f"{label}: diverged at t={diverged_at}", **style)
    color = style.get("color")
    ax.plot([diverged_at], [mark], "x", color=color, ms=8, mew=2)
    ax.annotate(
        f"{label} diverged, t={diverged_at}",
        (diverged_at, mark),
        xytext=(7, 0),
        textcoords="offset points",
        va="center",
        fontsize=7,
        color=color,
    )
