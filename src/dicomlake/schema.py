"""The lake's column contract: the Arrow schemas of its tables.

Every engine and kernel produces rows in exactly this schema, and the SQL views are
written against it. Adding a column is fine; renaming or retyping one breaks users.
"""

from __future__ import annotations

from typing import Final

import pyarrow as pa

#: Promoted DICOM tags, by keyword, with the Arrow type of their typed column.
#: Multi-valued tags are lists; dates are DATE; numbers are numbers.
PROMOTED_TAGS: dict[str, pa.DataType] = {
    "SOPInstanceUID": pa.string(),
    "SOPClassUID": pa.string(),
    "StudyInstanceUID": pa.string(),
    "SeriesInstanceUID": pa.string(),
    "PatientID": pa.string(),
    "PatientName": pa.string(),
    "PatientSex": pa.string(),
    "PatientAge": pa.string(),
    "PatientBirthDate": pa.date32(),
    "StudyDate": pa.date32(),
    "StudyTime": pa.string(),
    "StudyDescription": pa.string(),
    "SeriesDescription": pa.string(),
    "SeriesNumber": pa.int64(),
    "InstanceNumber": pa.int64(),
    "AccessionNumber": pa.string(),
    "Modality": pa.string(),
    "BodyPartExamined": pa.string(),
    "Manufacturer": pa.string(),
    "ManufacturerModelName": pa.string(),
    "TransferSyntaxUID": pa.string(),
    "Rows": pa.int32(),
    "Columns": pa.int32(),
    "NumberOfFrames": pa.int32(),
    "BitsAllocated": pa.int32(),
    "BitsStored": pa.int32(),
    "PhotometricInterpretation": pa.string(),
    "SamplesPerPixel": pa.int32(),
    "PixelSpacing": pa.list_(pa.float64()),
    "SliceThickness": pa.float64(),
    "ImagePositionPatient": pa.list_(pa.float64()),
    "ImageOrientationPatient": pa.list_(pa.float64()),
    "RescaleSlope": pa.float64(),
    "RescaleIntercept": pa.float64(),
    "WindowCenter": pa.list_(pa.float64()),
    "WindowWidth": pa.list_(pa.float64()),
}

#: Where a row came from: one per file or zip member.
SOURCE_FIELDS: list[pa.Field] = [
    pa.field("row_id", pa.int64(), nullable=False),
    pa.field("path", pa.string(), nullable=False),
    pa.field("relative_path", pa.string()),
    pa.field("extension", pa.string()),
    pa.field("path_tags", pa.list_(pa.string())),
    pa.field("size", pa.int64()),
    pa.field("modification_time", pa.timestamp("us", tz="UTC")),
]

#: How parsing went. ``status`` is one of :data:`STATUSES`; ``error`` is null when ok.
#: ``warnings`` lists problems that did not stop the row (an element that could not be
#: converted, an unparseable date), so a row is never silently partial.
PARSE_FIELDS: list[pa.Field] = [
    pa.field("status", pa.string(), nullable=False),
    pa.field("error", pa.string()),
    pa.field("warnings", pa.list_(pa.string())),
    # which header parser read the file: 'native' (the C fast path) or 'pydicom'
    pa.field("parser", pa.string()),
]

STATUSES = ("ok", "not_dicom", "error")

INSTANCES_SCHEMA: pa.Schema = pa.schema(
    SOURCE_FIELDS
    + PARSE_FIELDS
    + [pa.field(name, typ) for name, typ in PROMOTED_TAGS.items()]
    + [
        pa.field("has_pixel_data", pa.bool_()),
        pa.field("meta", pa.string()),
        pa.field("ingested_at", pa.timestamp("us", tz="UTC")),
    ]
)

#: The ``thumbnails`` table: one row per drawn frame (one per instance by default).
#: A file that cannot be drawn has a row with ``status='error'`` and no ``data``.
THUMBNAILS_SCHEMA: pa.Schema = pa.schema(
    [
        pa.field("row_id", pa.int64(), nullable=False),  # the instance's row_id
        pa.field("path", pa.string(), nullable=False),
        pa.field("SOPInstanceUID", pa.string()),
        pa.field("frame", pa.int32()),  # 0-based index of the frame drawn
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("mode", pa.string()),  # 'L' or 'RGB'
        pa.field("format", pa.string()),  # 'png' or 'jpeg'
        pa.field("data", pa.binary()),
        pa.field("status", pa.string(), nullable=False),  # 'ok' or 'error'
        pa.field("error", pa.string()),
        pa.field("size", pa.int64()),  # of the source file, for incremental runs
        pa.field("modification_time", pa.timestamp("us", tz="UTC")),
        pa.field("created_at", pa.timestamp("us", tz="UTC")),
    ]
)

#: The ``patches`` table: one row per patch kept, or one error row per frame (or file)
#: that could not be tiled.
PATCHES_SCHEMA: Final = pa.schema(
    [
        pa.field("row_id", pa.int64(), nullable=False),  # the instance's row_id
        pa.field("path", pa.string(), nullable=False),
        pa.field("SOPInstanceUID", pa.string()),
        pa.field("frame", pa.int32()),  # 0-based; null when the file could not be read
        pa.field("x", pa.int32()),  # column of the patch's top-left pixel
        pa.field("y", pa.int32()),  # row of the patch's top-left pixel
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("tissue_fraction", pa.float64()),  # foreground share, 0..1
        pa.field("status", pa.string(), nullable=False),  # 'ok' or 'error'
        pa.field("error", pa.string()),
        pa.field("pixels", pa.binary()),  # float32 LE (channels, height, width) or null
        pa.field("channels", pa.int32()),  # 1 grayscale (physical units), 3 RGB 0..255
        pa.field("dtype", pa.string()),  # 'float32'
        pa.field("size", pa.int64()),  # of the source file, for incremental runs
        pa.field("modification_time", pa.timestamp("us", tz="UTC")),
        pa.field("created_at", pa.timestamp("us", tz="UTC")),
    ]
)

#: Schema of the ``volumes`` table: one row per series.
VOLUMES_SCHEMA: Final = pa.schema(
    [
        pa.field("SeriesInstanceUID", pa.string(), nullable=False),
        pa.field("StudyInstanceUID", pa.string()),
        pa.field("Modality", pa.string()),
        pa.field("status", pa.string(), nullable=False),  # 'ok' or 'rejected'
        pa.field("reason", pa.string()),  # a code of dicomlake.dicom.geometry.REASONS
        pa.field("message", pa.string()),
        pa.field("n_slices", pa.int32()),
        pa.field("rows", pa.int32()),
        pa.field("columns", pa.int32()),
        pa.field("spacing_row", pa.float64()),
        pa.field("spacing_column", pa.float64()),
        pa.field("spacing_slice", pa.float64()),
        pa.field("orientation", pa.list_(pa.float64())),  # 6 direction cosines
        pa.field("origin", pa.list_(pa.float64())),  # position of the first slice
        pa.field("affine", pa.list_(pa.float64())),  # 16 values, row-major
        pa.field("paths", pa.list_(pa.string())),  # slice order; path order if rejected
        pa.field("frames", pa.list_(pa.int32())),  # 0-based, in slice order
        pa.field("created_at", pa.timestamp("us", tz="UTC")),
    ]
)

#: The ``deid`` table: one row per instance and destination of a de-identification
#: run. It holds no value of the source files beyond their ``row_id`` and ``path``
#: (already in ``instances``): the output's UIDs are the new ones, and the key is
#: named by its fingerprint only.
DEID_SCHEMA: Final = pa.schema(
    [
        pa.field("row_id", pa.int64(), nullable=False),  # the source instance's row_id
        pa.field("path", pa.string(), nullable=False),  # the source file
        pa.field("destination", pa.string(), nullable=False),  # DEST as given, normalised
        pa.field("output", pa.string()),  # the file written; null when none was
        pa.field("status", pa.string(), nullable=False),  # 'ok', 'skipped' or 'error'
        pa.field("reason", pa.string()),  # why skipped, or the error's class and stage
        pa.field("options", pa.list_(pa.string())),  # PS3.15 options applied, sorted
        pa.field("key_fingerprint", pa.string()),  # of the pseudonym key, never the key
        pa.field("SOPInstanceUID", pa.string()),  # the output's (new) UID
        pa.field("size", pa.int64()),  # of the source file, for incremental runs
        pa.field("modification_time", pa.timestamp("us", tz="UTC")),
        pa.field("created_at", pa.timestamp("us", tz="UTC")),
    ]
)

#: The ``segments`` table: one row per segment of every SEG and per ROI of every RT
#: structure set, placed on the volume of the series it references (``dicomlake
#: labels``). A file that cannot be read has one row with a null ``segment_number``.
SEGMENTS_SCHEMA: Final = pa.schema(
    [
        pa.field("row_id", pa.int64(), nullable=False),  # the segmentation instance's row_id
        pa.field("path", pa.string(), nullable=False),  # the segmentation file
        pa.field("SOPInstanceUID", pa.string()),  # of the segmentation
        pa.field("StudyInstanceUID", pa.string()),
        pa.field("Modality", pa.string()),  # 'SEG' or 'RTSTRUCT'
        pa.field("segmentation_type", pa.string()),  # BINARY, FRACTIONAL, LABELMAP, CONTOUR
        pa.field("ReferencedSeriesInstanceUID", pa.string()),  # the series it labels
        pa.field("segment_number", pa.int32()),  # Segment Number, or ROI Number
        pa.field("label", pa.string()),  # Segment Label, or ROI Name
        pa.field("category_code_value", pa.string()),
        pa.field("category_code_scheme", pa.string()),
        pa.field("category_code_meaning", pa.string()),
        pa.field("type_code_value", pa.string()),
        pa.field("type_code_scheme", pa.string()),
        pa.field("type_code_meaning", pa.string()),
        pa.field("algorithm_type", pa.string()),  # AUTOMATIC, SEMIAUTOMATIC, MANUAL
        pa.field("algorithm_name", pa.string()),
        pa.field("voxel_count", pa.int64()),  # voxels of the mask on the volume
        pa.field("min_row", pa.int32()),  # bounding box on the volume, inclusive;
        pa.field("max_row", pa.int32()),  # null when empty or not placed
        pa.field("min_column", pa.int32()),
        pa.field("max_column", pa.int32()),
        pa.field("min_slice", pa.int32()),  # slice index in the volume's slice order
        pa.field("max_slice", pa.int32()),
        pa.field("status", pa.string(), nullable=False),  # 'ok' or 'error'
        pa.field("reason", pa.string()),  # a code of dicomlake.dicom.segments.REASONS
        pa.field("message", pa.string()),
        pa.field("size", pa.int64()),  # of the segmentation file, for incremental runs
        pa.field("modification_time", pa.timestamp("us", tz="UTC")),
        pa.field("created_at", pa.timestamp("us", tz="UTC")),
    ]
)

#: Acquisition attributes of an instance, by the name of their column in the
#: ``acquisition`` table (a DICOM keyword, or a keyword with its unit). Lists hold a
#: multi-valued attribute's values, or one value per frame of an enhanced multi-frame
#: instance where the attribute varies across frames (tube current, echo time...).
ACQUISITION_COLUMNS: Final[dict[str, pa.DataType]] = {
    "ImageType": pa.list_(pa.string()),
    "PixelSpacing_row_mm": pa.float64(),
    "PixelSpacing_col_mm": pa.float64(),
    "Rows": pa.int64(),
    "Columns": pa.int64(),
    "SliceThickness": pa.float64(),
    # CT
    "KVP": pa.float64(),
    "ScanOptions": pa.list_(pa.string()),
    "ConvolutionKernel": pa.list_(pa.string()),
    "GantryDetectorTilt": pa.float64(),
    "XRayTubeCurrent": pa.list_(pa.float64()),
    "FilterType": pa.string(),
    "Exposure": pa.list_(pa.float64()),
    "ExposureTime": pa.list_(pa.float64()),
    "DataCollectionDiameter": pa.float64(),
    "ReconstructionDiameter": pa.float64(),
    "SpiralPitchFactor": pa.float64(),
    # MR
    "MagneticFieldStrength": pa.float64(),
    "ScanningSequence": pa.list_(pa.string()),
    "SequenceVariant": pa.list_(pa.string()),
    "MRAcquisitionType": pa.string(),
    "EchoTime": pa.list_(pa.float64()),
    "RepetitionTime": pa.float64(),
    "EchoTrainLength": pa.int64(),
    "FlipAngle": pa.float64(),
    "PixelBandwidth": pa.float64(),
    "ImagingFrequency": pa.float64(),
    "ImagedNucleus": pa.string(),
    "InversionTime": pa.float64(),
    "ReceiveCoilName": pa.string(),
    "SequenceName": pa.string(),
    "DiffusionBValue": pa.list_(pa.float64()),
    "NumberOfTemporalPositions": pa.int64(),
    # PT
    "SeriesType": pa.list_(pa.string()),
    "Units": pa.string(),
    "DecayCorrection": pa.string(),
    "CorrectedImage": pa.list_(pa.string()),
    "RandomsCorrectionMethod": pa.string(),
    "ReconstructionMethod": pa.string(),
    "ActualFrameDuration": pa.list_(pa.float64()),
    "ScatterCorrectionMethod": pa.string(),
    "AttenuationCorrectionMethod": pa.string(),
    "RadionuclideCodeMeaning": pa.string(),
    "RadionuclideTotalDose": pa.float64(),
    "RadiopharmaceuticalStartTime": pa.string(),
    "Radiopharmaceutical": pa.string(),
    "NumberOfSlices": pa.int64(),
    "NumberOfTimeSlices": pa.int64(),
    # contrast
    "ContrastBolusAgent": pa.string(),
    "ContrastBolusIngredient": pa.string(),
    "ContrastBolusRoute": pa.string(),
    # SM (slide microscopy; the optical path is the first item of its sequence)
    "TotalPixelMatrixColumns": pa.int64(),
    "TotalPixelMatrixRows": pa.int64(),
    "TotalPixelMatrixFocalPlanes": pa.int64(),
    "NumberOfOpticalPaths": pa.int64(),
    "OpticalPathIdentifier": pa.string(),
    "ObjectiveLensPower": pa.float64(),
    "ContainerIdentifier": pa.string(),
}

#: The ``acquisition`` table: one row per ``ok`` instance, its acquisition attributes
#: typed (derived from ``meta`` by ``dicomlake.jobs.acquisition``). ``ingested_at`` is
#: the instance row's, so a re-ingested file's row is redone; ``warnings`` names each
#: value that did not convert (it is null).
ACQUISITION_SCHEMA: Final = pa.schema(
    [
        pa.field("row_id", pa.int64(), nullable=False),  # the instance's row_id
        pa.field("SeriesInstanceUID", pa.string()),
        pa.field("Modality", pa.string()),
        pa.field("ingested_at", pa.timestamp("us", tz="UTC")),
        pa.field("warnings", pa.list_(pa.string())),
    ]
    + [pa.field(name, typ) for name, typ in ACQUISITION_COLUMNS.items()]
)
