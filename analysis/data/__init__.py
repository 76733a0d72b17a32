"""Datasets as uint8 tensors: where they come from (sources) and what is done with them (tensors)."""

from .sources import CACHE_DIR_ENV, DATA_DIR_ENV, DATASETS, SKIP_BAD_IMAGES_ENV, cache_dir, check_data_dir, default_data_dir, load_dataset
from .folder import FolderImages, TrainingCrops, UnreadableImage, take
from .tensors import ImageData, Images, augment, indices_hash, subset_indices, to_float

__all__ = ["DATASETS", "DATA_DIR_ENV", "CACHE_DIR_ENV", "SKIP_BAD_IMAGES_ENV", "ImageData", "Images", "FolderImages", "TrainingCrops", "UnreadableImage", "take", "load_dataset", "check_data_dir",
           "cache_dir", "default_data_dir",
           "subset_indices", "indices_hash", "to_float", "augment"]
