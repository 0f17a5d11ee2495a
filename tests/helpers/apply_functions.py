"""Functions the apply tests run, by name (``helpers.apply_functions:NAME``) in workers."""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np


def hu_stats(item: dict[str, Any]) -> dict[str, Any]:
    """First-order statistics of the image, in float64, and its shape."""
    image = item["image"].astype(np.float64)
    return {
        "mean": image.mean(),
        "std": image.std(),
        "low": image.min(),
        "high": image.max(),
        "shape": list(item["image"].shape),
        "dtype": str(item["image"].dtype),
    }


def series_stats(item: dict[str, Any]) -> dict[str, Any]:
    """Per-slice means (slice order), spacing, affine and slice paths of a volume."""
    image = item["image"].astype(np.float64)
    meta = item["meta"]
    return {
        "slice_means": image.mean(axis=(0, 1, 2)),
        "shape": list(image.shape),
        "spacing": meta["spacing"],
        "affine": meta["affine"].reshape(-1),
        "paths": meta["paths"],
    }


def fails_on_mr(item: dict[str, Any]) -> dict[str, Any]:
    """Raise, with a long message, for the MR file; statistics for the others."""
    if "MR_small" in item["meta"]["path"]:
        raise ValueError("no MR here " + "x" * 2000)
    return {"mean": float(item["image"].mean())}


def sleeps_on_mr(item: dict[str, Any]) -> dict[str, Any]:
    """Hang on the MR file (the unit timeout's case); the mean of the others."""
    if "MR_small" in item["meta"]["path"]:
        time.sleep(120)
    return {"mean": float(item["image"].mean())}


def kind_by_file(item: dict[str, Any]) -> dict[str, Any]:
    """A number for CT, text for MR: two types for one key."""
    return {"kind": "text" if "MR_small" in item["meta"]["path"] else 1}


def whole(item: dict[str, Any]) -> dict[str, Any]:
    """An integer count of pixels."""
    return {"n": int(item["image"].size)}


def half(item: dict[str, Any]) -> dict[str, Any]:
    """A fraction where :func:`whole` gave an integer, and a new column."""
    return {"n": item["image"].size / 2, "note": "half"}


not_a_function = 3


def whole_as_text(item: dict[str, Any]) -> dict[str, Any]:
    """The count of :func:`whole` as text: a type the table's integer column refuses."""
    return {"n": str(item["image"].size)}


def pixels(item: dict[str, Any]) -> dict[str, Any]:
    """The image itself, as little-endian float32 bytes, and its shape."""
    image = item["image"]
    return {"pixels": image.astype("<f4").tobytes(), "shape": list(image.shape)}


def sleeps_on_volumes(item: dict[str, Any]) -> dict[str, Any]:
    """Hang on a series of more than one slice (a whole series is one unit)."""
    if item["image"].shape[-1] > 1:
        time.sleep(120)
    return {"slices": item["image"].shape[-1]}


def exits_on_mr(item: dict[str, Any]) -> dict[str, Any]:
    """Kill the worker process on the MR file, as a crashing codec would."""
    if "MR_small" in item["meta"]["path"]:
        os._exit(3)
    return {"mean": float(item["image"].mean())}
