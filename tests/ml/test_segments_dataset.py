"""SegmentationDataset: items of image and masks, as SeriesVolumeDataset and MONAI take them.

The corpus is the one of test_segments (tests/helpers/segmentations.py): shuffled
axial and oblique series, SEGs of the three types, RT structure sets, a SEG whose
series is not in the lake.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from dicomlake.errors import QueryError, TableNotFound
from dicomlake.jobs.labels import build_segments
from helpers.segmentations import Corpus, build_corpus

pytestmark = pytest.mark.torch
pytest.importorskip("highdicom", reason="highdicom (the ml extra) reads DICOM SEG")


@pytest.fixture
def torch() -> Any:
    return pytest.importorskip("torch")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    corpus = build_corpus(tmp_path_factory.mktemp("segdataset"))
    build_segments(str(corpus.lake))
    return corpus


def _name(corpus: Corpus, path: str) -> str:
    return next(n for n, c in corpus.cases.items() if path.endswith("/" + c.path.name))


def test_items_are_volumes_with_their_masks(corpus: Corpus, torch: Any) -> None:
    from dicomlake.ml import SegmentationDataset, SeriesVolumeDataset

    ds = SegmentationDataset(corpus.lake, "SELECT * FROM segments ORDER BY path")
    names = [_name(corpus, s.path) for s in ds.segmentations]
    assert sorted(names) == sorted(set(corpus.cases) - {"missing"})
    assert [(_name(corpus, r.path), r.reason) for r in ds.rejected] == [
        ("missing", "reference_missing")
    ]
    volumes = SeriesVolumeDataset(corpus.lake, "SELECT * FROM series WHERE Modality = 'CT'")
    images = {uid: volumes[i]["image"] for i, uid in enumerate(volumes.series_uids)}
    for index, name in enumerate(names):
        case = corpus.cases[name]
        assert case.series is not None
        item = ds[index]
        assert torch.equal(item["image"], images[case.series.uid])
        numbers = sorted(case.truth)
        assert item["meta"]["segment_numbers"] == numbers
        assert item["meta"]["segments"] == [case.labels[n] for n in numbers]
        assert item["meta"]["SeriesInstanceUID"] == case.series.uid
        assert item["label"].dtype == torch.uint8
        assert item["label"].shape == (len(numbers), *item["image"].shape[1:])
        if not name.startswith("rtstruct"):  # rtstruct: edge pixels, see test_segments
            truth = np.stack([case.truth[n] for n in numbers])
            assert np.array_equal(item["label"].numpy().astype(bool), truth), name
        np.testing.assert_allclose(item["meta"]["affine"].numpy(), case.series.affine, atol=1e-4)


def test_segment_number_in_the_query_picks_channels_and_labelmap(
    corpus: Corpus, torch: Any
) -> None:
    from dicomlake.ml import SegmentationDataset

    ds = SegmentationDataset(
        corpus.lake,
        "SELECT path, segment_number FROM segments WHERE label IN ('lesion', 'spleen')",
        labelmap=True,
    )
    by_name = {_name(corpus, s.path): s for s in ds.segmentations}
    assert {n: s.numbers for n, s in by_name.items()} == {"binary": (2,), "labelmap": (2,)}
    for index, segmentation in enumerate(ds.segmentations):
        case = corpus.cases[_name(corpus, segmentation.path)]
        label = ds[index]["label"]
        assert label.shape[0] == 1
        assert np.array_equal(label[0].numpy(), np.where(case.truth[2], 2, 0))


def test_cache_pickle_and_loader(corpus: Corpus, tmp_path: Path, torch: Any) -> None:
    from dicomlake.ml import SegmentationDataset

    sql = "SELECT DISTINCT SOPInstanceUID FROM segments WHERE segmentation_type = 'FRACTIONAL'"
    ds = SegmentationDataset(corpus.lake, sql, cache_dir=tmp_path / "cache", window=(40, 400))
    first = ds[0]
    assert len(list((tmp_path / "cache" / "labels").rglob("*.npy"))) == 1
    again = pickle.loads(pickle.dumps(ds))[0]
    assert torch.equal(first["label"], again["label"])
    assert torch.equal(first["image"], again["image"])
    assert float(first["image"].min()) >= 0 and float(first["image"].max()) <= 1
    assert len(pickle.dumps(ds)) < 50_000
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=1)))
    assert batch["label"].shape == (1, *first["label"].shape)
    assert batch["meta"]["segments"] == [("tumour",)]


def test_query_errors(corpus: Corpus, tmp_path: Path, torch: Any) -> None:
    from dicomlake.ml import SegmentationDataset

    with pytest.raises(QueryError, match="path or SOPInstanceUID"):
        SegmentationDataset(corpus.lake, "SELECT label FROM segments")
    with pytest.raises(QueryError):
        SegmentationDataset(corpus.lake, "SELECT * FROM nowhere")
    import shutil

    bare = tmp_path / "bare"
    shutil.copytree(corpus.lake / "instances", bare / "instances")
    with pytest.raises(TableNotFound, match="dicomlake labels"):
        SegmentationDataset(bare, "SELECT * FROM instances")


def test_monai_dictionary_transforms_take_items_as_they_are(corpus: Corpus, torch: Any) -> None:
    monai = pytest.importorskip("monai", reason="MONAI (the test extra) checks the items")
    from monai.transforms import Compose, Orientationd, RandCropByPosNegLabeld, Spacingd

    from dicomlake.ml import SegmentationDataset

    keys = ["image", "label"]
    transform = Compose(
        [
            Spacingd(keys=keys, pixdim=(1.0, 1.0, 2.0), mode=("bilinear", "nearest")),
            Orientationd(keys=keys, axcodes="RAS", labels=None),  # labels from "space"
        ]
    )
    sql = "SELECT * FROM segments WHERE label = 'tumour'"  # the oblique series
    plain = SegmentationDataset(corpus.lake, sql, metatensor=True)[0]
    ds = SegmentationDataset(corpus.lake, sql, metatensor=True, transform=transform)
    item = ds[0]
    assert isinstance(item["image"], monai.data.MetaTensor)

    # the label's centre in patient coordinates stays where it was
    def centre(label: Any) -> np.ndarray:
        index = np.argwhere(label[0].numpy() > 0).mean(axis=0)
        return (np.asarray(label.affine, float) @ np.r_[index, 1.0])[:3]

    np.testing.assert_allclose(centre(item["label"]), centre(plain["label"]), atol=1.5)
    # RAS in an LPS affine: the axes run to -x (right), -y (anterior), +z (superior)
    axes = np.asarray(item["image"].affine, float)[:3, :3]
    dominant = np.argmax(np.abs(axes), axis=0)
    assert dominant.tolist() == [0, 1, 2]
    assert np.sign(axes[dominant, [0, 1, 2]]).tolist() == [-1, -1, 1]
    spacing = np.linalg.norm(np.asarray(item["image"].affine)[:3, :3], axis=0)
    np.testing.assert_allclose(spacing, (1.0, 1.0, 2.0), atol=1e-4)
    assert set(np.unique(item["label"].numpy())) <= {0, 1}
    crop = RandCropByPosNegLabeld(
        keys=keys, label_key="label", spatial_size=(24, 24, 4), pos=1, neg=1, num_samples=2
    )
    crop.set_random_state(0)
    samples = crop(item)
    assert len(samples) == 2
    for sample in samples:
        assert tuple(sample["image"].shape) == (1, 24, 24, 4)
        assert tuple(sample["label"].shape) == (1, 24, 24, 4)
