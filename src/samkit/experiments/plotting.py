"""Shared figure helpers: Agg backend, a consistent style, atomic PNG saving."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from samkit._io import atomic_write  # noqa: E402

__all__ = ["plt", "new_figure", "save_figure", "METHOD_STYLE", "method_label"]

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
