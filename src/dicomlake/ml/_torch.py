"""torch for :mod:`dicomlake.ml`: imported on first use, with a clear error if missing."""

from __future__ import annotations

from typing import Any


def require_torch() -> Any:
    """Return the ``torch`` module.

    Raises:
        ImportError: torch is not installed; the message names the extra to install.
    """
    try:
        import torch
    except ImportError as exc:
        raise ImportError(
            "dicomlake.ml datasets need PyTorch: pip install 'dicomlake[ml]' "
            "(torch==2.13.0; on a CPU-only machine its CPU build)"
        ) from exc
    return torch
