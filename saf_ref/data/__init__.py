"""saf_ref.data: the shipped datasets (offline), loaders for CIFAR/MNIST files on disk, augmentation.

The shipped datasets are package data (``saf_ref/data/files/``, inside the wheel too; ``$SAF_REF_DATA``
overrides the folder they are read from) and are verified by SHA-256 on every load. CIFAR archives are
Python pickles; they are read with a restricted unpickler that allows only the plain types they contain
and builds arrays of plain numbers itself, so a malicious file cannot run code or read other memory.
"""

# The generic ``download(name, dest, ...)`` stays in its module, ``saf_ref.data.download``: exporting a
# function of the same name here would shadow the submodule.
from saf_ref.data.augment import (
    channel_stats,
    iterate_minibatches,
    normalize_channels,
    random_crop,
    random_crop_flip,
    random_hflip,
)
from saf_ref.data.cifar import cifar10_label_names, cifar100_label_names, load_cifar10, load_cifar100
from saf_ref.data.download import (
    ChecksumError,
    download_cifar10,
    download_cifar100,
    download_mnist,
    verify_sha256,
)
from saf_ref.data.mnist import load_mnist, parse_idx, read_idx
from saf_ref.data.shipped import (
    Dataset,
    Split,
    data_dir,
    golden_dir,
    load_digits,
    load_mnist5k,
    load_shipped,
    package_data_dir,
)

__all__ = [
    "ChecksumError",
    "Dataset",
    "Split",
    "channel_stats",
    "cifar100_label_names",
    "cifar10_label_names",
    "data_dir",
    "download_cifar10",
    "download_cifar100",
    "download_mnist",
    "golden_dir",
    "iterate_minibatches",
    "load_cifar10",
    "load_cifar100",
    "load_digits",
    "load_mnist",
    "load_mnist5k",
    "load_shipped",
    "normalize_channels",
    "package_data_dir",
    "parse_idx",
    "random_crop",
    "random_crop_flip",
    "random_hflip",
    "read_idx",
    "verify_sha256",
]
