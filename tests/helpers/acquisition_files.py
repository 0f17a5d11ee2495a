"""DICOM files of acquisitions written with pydicom: classic and enhanced, CT, MR, PT."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from dicomlake.sample import sample_file

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
PT_IMAGE = "1.2.840.10008.5.1.4.1.1.128"


def item(**values: Any) -> Dataset:
    ds = Dataset()
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    return ds


def save(ds: Dataset, path: Path, sop_class: str) -> Path:
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(path, enforce_file_format=True)
    return path


def enhanced_mr(
    path: Path, echo_times: list[float], b_values: list[float], series: str | None = None
) -> Path:
    """An enhanced MR whose frames differ in echo time and b-value."""
    ds = Dataset()
    ds.Modality = "MR"
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = series or generate_uid()
    ds.NumberOfFrames = len(echo_times)
    ds.Rows, ds.Columns = 8, 8
    ds.MagneticFieldStrength = 3
    ds.ResonantNucleus = "1H"
    ds.PulseSequenceName = "DWI_EPI"
    shared = item(
        PixelMeasuresSequence=Sequence([item(PixelSpacing=[0.5, 0.75], SliceThickness=3)]),
        MRTimingAndRelatedParametersSequence=Sequence(
            [item(RepetitionTime=4200, FlipAngle=90, EchoTrainLength=64)]
        ),
        MRImagingModifierSequence=Sequence([item(PixelBandwidth=1500, TransmitterFrequency=127.7)]),
        MRReceiveCoilSequence=Sequence([item(ReceiveCoilName="HEAD32")]),
    )
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    ds.PerFrameFunctionalGroupsSequence = Sequence(
        [
            item(
                MREchoSequence=Sequence([item(EffectiveEchoTime=te)]),
                MRDiffusionSequence=Sequence([item(DiffusionBValue=b)]),
            )
            for te, b in zip(echo_times, b_values, strict=True)
        ]
    )
    return save(ds, path, "1.2.840.10008.5.1.4.1.1.4.1")


def enhanced_ct(path: Path) -> Path:
    """An enhanced CT: constant X-ray details shared, exposure per frame."""
    ds = Dataset()
    ds.Modality = "CT"
    ds.NumberOfFrames = 3
    shared = item(
        CTXRayDetailsSequence=Sequence([item(KVP=100, FilterType="BODY")]),
        CTReconstructionSequence=Sequence(
            [item(ConvolutionKernel=["B30f"], ReconstructionDiameter=350)]
        ),
        CTAcquisitionDetailsSequence=Sequence(
            [item(GantryDetectorTilt=0, DataCollectionDiameter=500)]
        ),
        CTTableDynamicsSequence=Sequence([item(SpiralPitchFactor=0.8)]),
        PixelMeasuresSequence=Sequence([item(PixelSpacing=[0.7, 0.7], SliceThickness=1)]),
    )
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    ds.PerFrameFunctionalGroupsSequence = Sequence(
        [
            item(
                CTExposureSequence=Sequence(
                    [item(XRayTubeCurrentInmA=ma, ExposureInmAs=ma / 2, ExposureTimeInms=500)]
                )
            )
            for ma in (150.0, 210.5, 180.0)
        ]
    )
    return save(ds, path, "1.2.840.10008.5.1.4.1.1.2.1")


def classic_ct_series(folder: Path, currents: list[int], **attributes: Any) -> str:
    """CT_small.dcm as a series of slices whose tube current varies (dose modulation).

    Returns:
        The series' UID.
    """
    series = generate_uid()
    folder.mkdir(parents=True, exist_ok=True)
    for number, current in enumerate(currents, start=1):
        ds = pydicom.dcmread(sample_file("CT_small.dcm"))
        ds.SeriesInstanceUID = series
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = number
        ds.XRayTubeCurrent = current
        ds.Exposure = current // 2
        ds.ExposureTime = 400 + number
        for keyword, value in attributes.items():
            setattr(ds, keyword, value)
        ds.save_as(folder / f"ct{number}.dcm")
    return series


def pt_series(folder: Path, durations: list[int]) -> str:
    """A PET series of one slice per frame duration, with a radiopharmaceutical."""
    series = generate_uid()
    folder.mkdir(parents=True, exist_ok=True)
    for number, duration in enumerate(durations, start=1):
        ds = Dataset()
        ds.Modality = "PT"
        ds.StudyInstanceUID = series + ".1"
        ds.SeriesInstanceUID = series
        ds.InstanceNumber = number
        ds.SeriesType = ["STATIC", "IMAGE"]
        ds.Units = "BQML"
        ds.DecayCorrection = "START"
        ds.CorrectedImage = ["ATTN", "DECY", "SCAT"]
        ds.RandomsCorrectionMethod = "DLYD"
        ds.ReconstructionMethod = "OSEM"
        ds.ScatterCorrectionMethod = "Model-based"
        ds.AttenuationCorrectionMethod = "CT-based"
        ds.ActualFrameDuration = duration
        ds.NumberOfSlices = len(durations)
        ds.NumberOfTimeSlices = 1
        ds.PixelSpacing = [4.0, 4.0]
        ds.SliceThickness = 3.27
        ds.Rows, ds.Columns = 2, 2
        ds.RadiopharmaceuticalInformationSequence = Sequence(
            [
                item(
                    Radiopharmaceutical="Fluorodeoxyglucose",
                    RadionuclideTotalDose=370000000,
                    RadiopharmaceuticalStartTime="101500",
                    RadionuclideCodeSequence=Sequence([item(CodeMeaning="^18^Fluorine")]),
                )
            ]
        )
        save(ds, folder / f"pt{number}.dcm", PT_IMAGE)
    return series


def sm_instance(
    path: Path, series: str, image_type: list[str], matrix: tuple[int, int], spacing: float
) -> Path:
    """One level (or label) of a slide microscopy pyramid: tiled, one optical path."""
    ds = Dataset()
    ds.Modality = "SM"
    ds.StudyInstanceUID = series + ".1"
    ds.SeriesInstanceUID = series
    ds.ImageType = image_type
    ds.ContainerIdentifier = "SLIDE-7"
    ds.TotalPixelMatrixColumns, ds.TotalPixelMatrixRows = matrix
    ds.TotalPixelMatrixFocalPlanes = 1
    ds.NumberOfOpticalPaths = 1
    ds.Rows, ds.Columns = 256, 256
    ds.OpticalPathSequence = Sequence([item(OpticalPathIdentifier="1", ObjectiveLensPower=20)])
    ds.SharedFunctionalGroupsSequence = Sequence(
        [
            item(
                PixelMeasuresSequence=Sequence(
                    [item(PixelSpacing=[spacing, spacing], SliceThickness=0.004)]
                )
            )
        ]
    )
    return save(ds, path, "1.2.840.10008.5.1.4.1.1.77.1.6")
