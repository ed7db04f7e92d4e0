"""Datasets and transforms: the bundled digits, robust image folders, seeded sharded sampling."""

from sofa.data.digits import DIGITS_CLASSES, DigitsDataset, digits_split
from sofa.data.folder import ImageFolderDataset, image_folder_splits, load_image, to_rgb
from sofa.data.sampling import EpochShardSampler, SeededDataset, ShardSampler, mix_seed, seed_everything
from sofa.data.transforms import build_transform, resolve_data_config

__all__ = [
    "DIGITS_CLASSES",
    "DigitsDataset",
    "digits_split",
    "ImageFolderDataset",
    "image_folder_splits",
    "load_image",
    "to_rgb",
    "EpochShardSampler",
    "SeededDataset",
    "ShardSampler",
    "mix_seed",
    "seed_everything",
    "build_transform",
    "resolve_data_config",
]
