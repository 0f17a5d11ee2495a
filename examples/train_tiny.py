"""Train a tiny CNN to tell CT, MR, ultrasound and CR frames apart, straight from a lake.

    python examples/train_tiny.py                    # builds ./demo-lake from sample data
    python examples/train_tiny.py --lake my-lake --sql "SELECT path, Modality FROM ..."
    python examples/train_tiny.py --save tiny.pt     # keep the weights for infer.py

The frames are chosen by SQL, decoded by :class:`dicomlake.ml.FrameDataset` in the
DataLoader's workers (display-windowed, one channel, 64 x 64), and cached as ``.npy``
so that the second epoch does not decode again. One epoch on the sample data takes
seconds on a CPU; the point is the plumbing, not the model.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from torch import nn

from dicomlake.ml import FrameDataset
from dicomlake.sample import sample_lake

DEFAULT_SQL = """
SELECT path, Modality
FROM instances
WHERE Modality IN ('CT', 'MR', 'US', 'CR')
"""


class TinyNet(nn.Module):
    """Two convolutions and a linear layer: enough to learn modality from a thumbnail."""

    def __init__(self, classes: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
        )
        self.head = nn.Linear(16, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits for a batch of (N, 1, H, W) frames."""
        return self.head(self.features(x).flatten(1))


def build_lake(lake: Path, data: Path) -> None:
    """Ingest the built-in sample data into ``lake`` unless it is there already."""
    done = sample_lake(lake, data)
    if done:
        print(done)


def main() -> None:
    """Parse the options, build the lake if needed, train, print each epoch's loss."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lake", type=Path, default=Path("demo-lake"))
    parser.add_argument("--data", type=Path, default=Path("demo-data"))
    parser.add_argument("--sql", default=DEFAULT_SQL)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--save", type=Path, default=None, help="weights file for infer.py")
    args = parser.parse_args()

    torch.manual_seed(0)
    build_lake(args.lake, args.data)
    dataset = FrameDataset(
        args.lake,
        args.sql,
        label="Modality",
        window="dicom",
        size=64,
        channels=1,
        on_error="skip",
        cache_dir=args.cache_dir or args.lake.parent / f"{args.lake.name}-frame-cache",
    )
    labels = [dataset.labels.encode(v) for v in dataset.items.column("Modality").to_pylist()]
    counts = torch.bincount(torch.tensor(labels), minlength=len(dataset.classes))
    per_class = dict(zip(dataset.classes, counts.tolist(), strict=True))
    print(f"{len(dataset)} frames, classes {per_class}")
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=16, shuffle=True, num_workers=args.workers
    )
    model = TinyNet(len(dataset.classes))
    # rare classes weigh more, so "always ultrasound" is not the easy way out
    weights = counts.sum() / (len(counts) * counts.clamp(min=1))
    loss_fn = nn.CrossEntropyLoss(weight=weights.float())
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for epoch in range(1, args.epochs + 1):
        started, total, seen, correct = time.perf_counter(), 0.0, 0, 0
        for batch in loader:
            logits = model(batch["image"])
            loss = loss_fn(logits, batch["label"])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * len(batch["label"])
            seen += len(batch["label"])
            correct += int((logits.argmax(1) == batch["label"]).sum())
        seconds = time.perf_counter() - started
        print(
            f"epoch {epoch}: loss {total / seen:.4f}, train accuracy {correct / seen:.2f}, "
            f"{seen / seconds:.0f} frames/s"
        )
    if args.save is not None:
        torch.save({"classes": list(dataset.classes), "state_dict": model.state_dict()}, args.save)
        print(f"saved the weights to {args.save}")


if __name__ == "__main__":
    main()
