"""Showing a headless figure when (and only when) an interactive matplotlib backend is active."""

from __future__ import annotations

import warnings
from typing import Any

from ..plotting import require_matplotlib

_NON_INTERACTIVE = {"agg", "cairo", "pdf", "pgf", "ps", "svg", "template"}


def show_if_interactive(fig: Any) -> bool:
    """Display ``fig`` in a notebook or GUI window if the active backend can; never raises.

    Returns:
        Whether the figure was handed to a display.
    """
    matplotlib = require_matplotlib()
    backend = str(matplotlib.get_backend()).lower()
    if backend in _NON_INTERACTIVE:
        return False
    try:
        if "inline" in backend or "ipympl" in backend or backend in ("widget", "nbagg"):
            from IPython.display import display

            display(fig)
            return True
        import matplotlib.pyplot as plt

        backend_mod = plt._get_backend_mod()
        manager = backend_mod.new_figure_manager_given_figure(id(fig), fig)
        manager.show()
        return True
    except Exception as e:  # pragma: no cover - depends on the user's display
        warnings.warn(f"could not display the figure with matplotlib backend {backend!r}: {e}", stacklevel=3)
        return False
