"""Data sets and loaders (section 5 of the paper), read with this package's own file readers.

Built in: digits (the offline default), synthetic, CIFAR-10, CIFAR-100, MNIST and Fashion-MNIST.

``load_data("CIFAR100", "data/")`` gives a :class:`DataBundle` with the training and test loaders
and the facts (``num_classes``, ``in_channels``, ``input_size``) to build a matching model.
"""

from .cifar import read_cifar
from .digits import load_digits_arrays
from .errors import DatasetNotFoundError, MissingDependencyError
from .image_dataset import ImageDataset
from .loaders import DataBundle, infer_data_info, load_data
from .mnist import read_idx, read_mnist
from .registry import get_dataset, list_datasets, register_dataset, resolve_data_path
from .safe_pickle import UnsafePickleError, safe_load_pickle
from .splits import random_subset, stratified_split
from .synthetic import make_synthetic
from .transforms import (
    Compose,
    Normalize,
    RandomCrop,
    RandomHorizontalFlip,
    Transform,
    cifar_augmentation,
)

__all__ = [
    "Compose",
    "DataBundle",
    "DatasetNotFoundError",
    "ImageDataset",
    "MissingDependencyError",
    "Normalize",
    "RandomCrop",
    "RandomHorizontalFlip",
    "Transform",
    "UnsafePickleError",
    "cifar_augmentation",
    "get_dataset",
    "infer_data_info",
    "list_datasets",
    "load_data",
    "load_digits_arrays",
    "make_synthetic",
    "random_subset",
    "read_cifar",
    "read_idx",
    "read_mnist",
    "register_dataset",
    "resolve_data_path",
    "safe_load_pickle",
    "stratified_split",
]
