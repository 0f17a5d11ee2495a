"""Train a tiny 3D segmentation network on DICOM SEG labels, straight from a lake.

    python examples/train_seg.py                  # generates ./seg-demo-data and a lake
    python examples/train_seg.py --lake my-lake --sql "SELECT * FROM segments WHERE ..."

The data are generated: small CT series (32 x 32 pixels, 8 slices, file names and
Instance Numbers shuffled) each with a bright ball, and a DICOM SEG of the ball
written with highdicom. ``dicomlake.ingest`` puts them in a lake, ``build_segments``
(``dicomlake labels``) places each SEG on its series' volume, and
:class:`dicomlake.ml.SegmentationDataset` gives (image, mask) pairs chosen by SQL.
The point is the plumbing, not the model: two epochs take seconds on a CPU.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

import dicomlake
from dicomlake.jobs.labels import build_segments
from dicomlake.ml import SegmentationDataset

DEFAULT_SQL = "SELECT * FROM segments WHERE label = 'ball' AND status = 'ok'"
SIDE, SLICES = 32, 8


def write_case(folder: Path, index: int, rng: np.random.Generator) -> None:
    """One CT series with a ball in it, and a SEG of the ball."""
    import highdicom as hd
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sr.codedict import codes
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    centre = rng.uniform([8, 8, 2], [SIDE - 8, SIDE - 8, SLICES - 2])
    radius = rng.uniform(3.5, 6.0)
    r, c, k = np.meshgrid(np.arange(SIDE), np.arange(SIDE), np.arange(SLICES), indexing="ij")
    # 1 mm pixels and 2 mm slices: the ball is round in millimetres
    ball = (r - centre[0]) ** 2 + (c - centre[1]) ** 2 + (2 * (k - centre[2])) ** 2 <= radius**2
    hu = rng.normal(0, 20, ball.shape) + np.where(ball, 80.0, 0.0)
    order = rng.permutation(SLICES)  # file names and Instance Numbers out of slice order
    sources = []
    for slice_index in range(SLICES):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.PatientID, ds.PatientName = "CT", f"DEMO{index:03d}", "Demo^Ball"
        ds.PatientBirthDate, ds.PatientSex = "", "O"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.StudyID, ds.StudyDate, ds.StudyTime = "1", "20240101", "120000"
        ds.AccessionNumber, ds.ReferringPhysicianName = "", ""
        ds.SeriesNumber, ds.InstanceNumber = 1, int(order[slice_index]) + 1
        ds.Manufacturer = "dicomlake example"
        ds.ImagePositionPatient = [0.0, 0.0, 2.0 * slice_index]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.PixelSpacing, ds.SliceThickness = [1.0, 1.0], 2.0
        ds.Rows = ds.Columns = SIDE
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = 0, 1
        ds.PixelData = hu[:, :, slice_index].round().astype(np.int16).tobytes()
        ds.save_as(folder / f"slice{order[slice_index]:02d}.dcm", enforce_file_format=True)
        sources.append(pydicom.dcmread(folder / f"slice{order[slice_index]:02d}.dcm"))
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=np.moveaxis(ball, 2, 0).astype(np.uint8),
        segmentation_type="BINARY",
        segment_descriptions=[
            hd.seg.SegmentDescription(
                segment_number=1,
                segment_label="ball",
                segmented_property_category=codes.SCT.Tissue,
                segmented_property_type=codes.SCT.Tissue,
                algorithm_type="MANUAL",
            )
        ],
        series_instance_uid=generate_uid(),
        series_number=2,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="dicomlake example",
        manufacturer_model_name="train_seg",
        software_versions="1",
        device_serial_number="1",
    )
    seg.save_as(folder / "ball_seg.dcm")


def build_lake(lake: Path, data: Path, cases: int) -> None:
    """Generate ``cases`` series with SEGs, ingest them, write the segments table."""
    if not (lake / "instances").exists():
        rng = np.random.default_rng(0)
        for index in range(cases):
            write_case(data / f"case{index:03d}", index, rng)
        summary = dicomlake.ingest([str(data)], str(lake), workers=0)
        print(f"ingested {summary.done} files into {lake} ({summary.ok} ok)")
    print(build_segments(str(lake)))


class TinyUNet(nn.Module):
    """Three 3D convolutions: enough to find a bright ball."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv3d(1, 8, 3, padding=1),
            nn.ReLU(),
            nn.Conv3d(8, 8, 3, padding=1),
            nn.ReLU(),
            nn.Conv3d(8, 1, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Mask logits for a batch of (N, 1, rows, columns, slices) volumes."""
        return self.net(x)


def main() -> None:
    """Parse the options, build the lake if needed, train, print each epoch's loss."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lake", type=Path, default=Path("seg-demo-lake"))
    parser.add_argument("--data", type=Path, default=Path("seg-demo-data"))
    parser.add_argument("--sql", default=DEFAULT_SQL)
    parser.add_argument("--cases", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--cache-dir", type=Path, default=None)
    args = parser.parse_args()

    torch.manual_seed(0)
    build_lake(args.lake, args.data, args.cases)
    dataset = SegmentationDataset(args.lake, args.sql, window=(40, 200), cache_dir=args.cache_dir)
    print(f"{len(dataset)} segmentations, {len(dataset.rejected)} rejected")
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=1, shuffle=True, num_workers=args.workers
    )
    model = TinyUNet()
    # the ball is a few percent of the voxels: weigh them up, or "nothing" wins
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=torch.tensor(10.0))
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-2)
    for epoch in range(1, args.epochs + 1):
        started, total, seen, overlap, size = time.perf_counter(), 0.0, 0, 0.0, 0.0
        for batch in loader:
            target = batch["label"].float()
            logits = model(batch["image"])
            loss = loss_fn(logits, target)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * len(target)
            seen += len(target)
            predicted = (logits.detach() > 0).float()
            overlap += float((predicted * target).sum())
            size += float(predicted.sum() + target.sum())
        seconds = time.perf_counter() - started
        print(
            f"epoch {epoch}: loss {total / seen:.4f}, dice {2 * overlap / max(size, 1):.2f}, "
            f"{seen / seconds:.1f} volumes/s"
        )


if __name__ == "__main__":
    main()
