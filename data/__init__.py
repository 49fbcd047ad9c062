"""Datasets on the training device, and augmentation as tensor ops (docs/methods.md section 1.6).
This folder holds code only: the datasets themselves live under --data_dir (default ./datasets)."""
from .datasets import DATASETS, DatasetInfo, dataset_info
from .holdout import check_holdout_count, class_balanced_holdout, hold_out, indices_sha256
from .loader import BatchRows, Shard, Split, TrainBatches, load_split, random_crop_flip, test_batches, to_float

DEFAULT_DATA_DIR = "./datasets"  # the datasets' own folder (git-ignored), never this code package

__all__ = ["DEFAULT_DATA_DIR", "DATASETS", "DatasetInfo", "dataset_info", "BatchRows", "Shard", "Split", "TrainBatches",
           "load_split",
           "random_crop_flip", "test_batches", "to_float", "check_holdout_count", "class_balanced_holdout", "hold_out", "indices_sha256"]
