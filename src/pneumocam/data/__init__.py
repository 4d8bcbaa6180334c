"""Chest X-rays read and prepared: file readers (DICOM, PNG/JPEG/TIFF, .npy) whose size limits are judged from
the header, patient metadata, the sources `prepare` knows (RSNA, class folders, MedMNIST), preprocessing to the
network's 224-px input, boxes, augmentation, phantom data, the prepared datasets and cross-validation folds.
"""

from pneumocam.exports import lazy_exports

_HOMES = {  # public name -> the module of this package that holds it
    "AUGMENT_RANGES": "augment", "AffineCropRanges": "augment", "augment_batch": "augment",
    "IntensityRanges": "augment", "jitter_intensity": "augment", "jitter_one": "augment", "sample_matrices": "augment",
    "geometry_of": "augment", "varies_intensity": "augment",
    "Box": "boxes", "Geometry": "boxes", "box_mask": "boxes", "box_masks": "boxes", "cell_coverage": "boxes",
    "load_boxes": "boxes", "split_boxes": "boxes", "square_geometry": "boxes",
    "BoxedSplit": "datasets", "InMemorySplit": "datasets", "WithTargets": "datasets", "build_transform": "datasets",
    "data_fingerprint": "datasets", "dataset_files": "datasets", "dataset_labels": "datasets",
    "evaluation_split": "datasets", "finding_targets": "datasets", "geometric_transform": "datasets",
    "load_split_in_memory": "datasets", "manifest_patients": "datasets", "manifest_rows": "datasets",
    "parse_shares": "datasets", "positive_weight": "datasets", "read_fingerprint": "datasets",
    "sample_groups": "datasets", "sample_weights": "datasets", "single_class_groups": "datasets",
    "soft_targets": "datasets", "split_dataset": "datasets", "view_targets": "datasets",
    "FOLDS_FILE": "folds", "assign_folds": "folds", "summarize_folds": "folds", "write_fold": "folds",
    "FOLDER_SUFFIXES": "inputs", "expand_inputs": "inputs", "require_images": "inputs", "resolve_inputs": "inputs",
    "MAX_ASPECT": "limits", "MAX_PIXELS": "limits", "MAX_SIDE": "limits", "TOO_LARGE": "limits",
    "embedded_frame_size": "limits", "npy_header": "limits", "size_problem": "limits",
    "AGE_BANDS": "metadata", "COLUMNS": "metadata", "FIELDS": "metadata", "FINDINGS": "metadata",
    "HEADER_KEYWORDS": "metadata", "Judge": "metadata", "MAX_AGE": "metadata", "METADATA_CSV": "metadata",
    "RSNA_CLASSES": "metadata", "age_band": "metadata", "attribute_values": "metadata", "from_header": "metadata",
    "normalise": "metadata", "read_metadata_csv": "metadata", "read_rsna_classes": "metadata",
    "read_source_metadata": "metadata", "read_views": "metadata",
    "Contract": "preprocess", "Normalization": "preprocess", "collate_images": "preprocess",
    "data_contract": "preprocess", "load_file": "preprocess", "normalised_batch": "preprocess",
    "pad_to_square": "preprocess", "read_normalization": "preprocess", "to_model_input": "preprocess",
    "DICOM_SUFFIXES": "readers", "HEADER_FIELDS": "readers", "ImageReadError": "readers", "NPY_SUFFIXES": "readers",
    "RASTER_SUFFIXES": "readers", "SUPPORTED_SUFFIXES": "readers", "import_dicom_support": "readers",
    "is_dicom": "readers", "read_dicom": "readers", "read_dicom_dataset": "readers", "read_header": "readers",
    "read_image": "readers", "read_image_and_size": "readers", "read_npy": "readers", "read_raster": "readers",
    "read_size": "readers",
    "DEFAULT_CLASS_MAP": "sources", "PATIENT_PATTERNS": "sources", "RSNA_BOX_SPACE": "sources",
    "RSNA_IMAGES": "sources", "RSNA_LABELS": "sources", "RSNA_SUFFIXES": "sources", "SOURCE_FORMATS": "sources",
    "SPLIT_NAMES": "sources", "SourceItem": "sources", "detect_format": "sources", "discover": "sources",
    "discover_class_folders": "sources", "discover_medmnist": "sources", "discover_rsna": "sources",
    "parse_class_map": "sources", "patient_from_name": "sources", "read_rsna_labels": "sources",
    "IMAGES_DIR": "synthetic", "LABELS_CSV": "synthetic", "Phantom": "synthetic", "WORK_SIZE": "synthetic",
    "make_phantom": "synthetic", "positives_for": "synthetic", "synthesize": "synthetic",
    "write_dicom_jpeg": "synthetic",
}
__all__ = sorted(_HOMES)
__getattr__ = lazy_exports(__name__, _HOMES)
