"""Classify every frame of a lake with the tiny network of ``train_tiny.py``, into SQL.

    python examples/train_tiny.py --save tiny.pt     # train, keep the weights
    python examples/infer.py --weights tiny.pt       # one prediction per frame
    python examples/infer.py                         # untrained (seed 0): plumbing only

``dicomlake.apply`` hands each frame to :class:`Classifier` as the datasets give it:
display-windowed ('dicom') and resized to 64 x 64, as ``train_tiny.py`` trained on. The
network is loaded once per worker process, on its first frame, and kept in a
module-level cache, so thousands of frames cost one load per core, not one per frame.
Each frame becomes one row of the lake's ``predictions`` table (``row_id``, ``path``,
``frame``, ``label``, ``score``, ``status``, ``error``) that SQL joins back to
``instances`` on ``row_id``. The run's ``version`` names the weights (a hash of the
file): run again with the same weights, nothing is redone; with new weights, every
frame is.
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from train_tiny import TinyNet, build_lake

import dicomlake
from dicomlake.ml.frame_dataset import match_channels

#: The classes ``train_tiny.py`` learns from the sample data, in its label order.
CLASSES = ("CR", "CT", "MR", "US")

#: Every frame of every instance with pixel data.
DEFAULT_SQL = "SELECT path FROM instances"

#: (weights file or "") -> (network, class names): one load per worker process.
_MODELS: dict[str, tuple[TinyNet, tuple[str, ...]]] = {}


def load_model(weights: str) -> tuple[TinyNet, tuple[str, ...]]:
    """The network and its class names, from ``weights`` or, if empty, seed 0.

    A weights file is what ``train_tiny.py --save`` writes: ``classes`` and
    ``state_dict``. Cached per process: the first frame of a worker loads it.
    """
    if weights not in _MODELS:
        torch.set_num_threads(1)  # the engine runs one worker per core already
        if weights:
            saved = torch.load(weights, map_location="cpu", weights_only=True)
            classes = tuple(saved["classes"])
            model = TinyNet(len(classes))
            model.load_state_dict(saved["state_dict"])
        else:
            torch.manual_seed(0)
            classes = CLASSES
            model = TinyNet(len(classes))
        _MODELS[weights] = (model.eval(), classes)
    return _MODELS[weights]


class Classifier:
    """The function ``apply`` runs: one frame in, its predicted modality out.

    A small picklable object rather than a bare function, so that the weights path
    travels to the workers with it; the network itself stays out of the pickle.

    Args:
        weights: A file written by ``train_tiny.py --save``; empty for seed 0.
    """

    def __init__(self, weights: str = "") -> None:
        self.weights = weights

    def __call__(self, item: dict[str, Any]) -> dict[str, Any]:
        """``label`` (the likeliest class), ``score`` (its probability), ``logits``."""
        model, classes = load_model(self.weights)
        image = match_channels(np.asarray(item["image"], dtype=np.float32), 1)
        with torch.inference_mode():
            logits = model(torch.from_numpy(np.ascontiguousarray(image))[None])[0]
        probabilities = logits.softmax(0)
        best = int(probabilities.argmax())
        return {
            "label": classes[best],
            "score": float(probabilities[best]),
            "logits": [float(v) for v in logits],
        }

    def __repr__(self) -> str:
        return f"Classifier(weights={self.weights!r})"


#: The report: predictions per modality the lake recorded.
REPORT_SQL = """
SELECT i.Modality, p.label, count(*) AS frames
FROM predictions AS p JOIN instances AS i USING (row_id)
WHERE p.status = 'ok'
GROUP BY ALL
ORDER BY i.Modality, frames DESC
"""


def main() -> None:
    """Parse the options, build the lake if needed, classify every frame, print a summary."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lake", type=Path, default=Path("demo-lake"))
    parser.add_argument("--data", type=Path, default=Path("demo-data"))
    parser.add_argument("--sql", default=DEFAULT_SQL)
    parser.add_argument("--weights", type=Path, default=None)
    parser.add_argument("--workers", type=int, default=None)
    args = parser.parse_args()

    build_lake(args.lake, args.data)
    classifier = Classifier(str(args.weights) if args.weights else "")
    # other weights are another function: its rows replace the old ones, none is skipped
    version = (
        "tiny-" + hashlib.sha256(args.weights.read_bytes()).hexdigest()[:12]
        if args.weights
        else "tiny-seed0"
    )
    summary = dicomlake.apply(
        str(args.lake),
        args.sql,
        classifier,
        unit="frame",
        table="predictions",
        workers=args.workers,
        version=version,
        window="dicom",
        size=64,
    )
    print(summary)
    with dicomlake.Lake(str(args.lake)) as lake:
        for modality, label, frames in lake.sql(REPORT_SQL).fetchall():
            print(f"{modality}\t{label}\t{frames}")


if __name__ == "__main__":
    main()
