"""Tests of the image data loaders of dedl.data: scikit-learn's digits, and CIFAR / MNIST read from files.

The CIFAR and MNIST tests write a few images in the original file formats into a temporary folder; nothing
is downloaded (torchvision is made unimportable wherever a download could be attempted).
"""

from __future__ import annotations

import gzip
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dedl import data
from dedl.data import DataUnavailableError, load_cifar10, load_cifar100, load_digits, load_mnist, read_idx


@pytest.fixture
def no_torchvision(monkeypatch):
    """Make ``import torchvision`` fail, so that no loader can reach the network."""
    monkeypatch.setitem(sys.modules, "torchvision", None)
    monkeypatch.setitem(sys.modules, "torchvision.datasets", None)


# --------------------------------------------------------------------------------------------------
# digits
# --------------------------------------------------------------------------------------------------


def test_load_digits_shapes_split_and_normalisation() -> None:
    x_train, y_train, x_test, y_test = load_digits()
    assert x_train.shape[1:] == (1, 8, 8) and x_test.shape[1:] == (1, 8, 8)
    assert x_train.dtype == torch.float32 and y_train.dtype == torch.long
    assert len(x_train) + len(x_test) == 1797 and len(x_train) == len(y_train) and len(x_test) == len(y_test)
    counts_all = torch.bincount(torch.cat([y_train, y_test]), minlength=10)
    counts_test = torch.bincount(y_test, minlength=10)
    expected = torch.tensor([round(0.25 * int(c)) for c in counts_all])
    assert torch.equal(counts_test, expected)  # stratified: a quarter of every class
    assert abs(x_train.mean().item()) < 1e-5 and abs(x_train.std().item() - 1) < 1e-4
    assert abs(x_test.mean().item()) < 0.1  # test split standardised with the training statistics


def test_load_digits_is_seeded() -> None:
    a, b = load_digits(seed=0), load_digits(seed=0)
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    c = load_digits(seed=1)
    assert not torch.equal(a[3], c[3]) or not torch.equal(a[2], c[2])
    x_train, _, x_test, _ = load_digits(test_fraction=0.5)
    assert abs(len(x_test) - len(x_train)) < 12


# --------------------------------------------------------------------------------------------------
# CIFAR
# --------------------------------------------------------------------------------------------------


def fake_images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, 3072), dtype=np.uint8)


def write_pickle(path: Path, batch: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        pickle.dump(batch, fh)


@pytest.fixture
def cifar10_root(tmp_path: Path) -> Path:
    folder = tmp_path / "cifar-10-batches-py"
    for i in range(1, 6):
        write_pickle(folder / f"data_batch_{i}", {b"data": fake_images(4, i), b"labels": [i % 10, 1, 2, 3]})
    write_pickle(folder / "test_batch", {b"data": fake_images(3, 0), b"labels": [9, 8, 7]})
    return tmp_path


def test_load_cifar10_reads_the_pickle_batches(cifar10_root: Path, no_torchvision) -> None:
    x, y = load_cifar10(cifar10_root, train=True)
    assert x.shape == (20, 3, 32, 32) and x.dtype == torch.float32
    assert y.dtype == torch.int64 and y.tolist()[:4] == [1, 1, 2, 3] and y.tolist()[-4:] == [5, 1, 2, 3]
    x_test, y_test = load_cifar10(cifar10_root, train=False)
    assert x_test.shape == (3, 3, 32, 32) and y_test.tolist() == [9, 8, 7]
    # layout: a row holds the red, green and blue planes, each 32x32 in row-major order
    raw = fake_images(3, 0)
    plain, _ = load_cifar10(cifar10_root, train=False, normalize=False)
    assert plain.min() >= 0 and plain.max() <= 1
    assert plain[1, 2, 5, 7].item() == pytest.approx(raw[1, 2 * 1024 + 5 * 32 + 7] / 255)
    # normalisation: per channel with the published training statistics
    mean, std = torch.tensor(data.CIFAR10_MEAN), torch.tensor(data.CIFAR10_STD)
    expected = (plain - mean[None, :, None, None]) / std[None, :, None, None]
    assert torch.allclose(x_test, expected, atol=1e-6)


def test_load_cifar10_from_the_environment_variable(cifar10_root: Path, monkeypatch, no_torchvision) -> None:
    monkeypatch.setenv("DEDL_DATA", str(cifar10_root))
    assert data.data_root() == cifar10_root
    x, _ = load_cifar10(train=False)
    assert len(x) == 3


def test_load_cifar100_fine_and_coarse_labels(tmp_path: Path, no_torchvision) -> None:
    folder = tmp_path / "cifar-100-python"
    write_pickle(folder / "train", {b"data": fake_images(5, 1), b"fine_labels": [0, 99, 50, 3, 4],
                                    b"coarse_labels": [0, 19, 10, 1, 2]})
    write_pickle(folder / "test", {b"data": fake_images(2, 2), b"fine_labels": [7, 8], b"coarse_labels": [1, 1]})
    x, fine = load_cifar100(tmp_path)
    _, coarse = load_cifar100(tmp_path, label="coarse")
    assert x.shape == (5, 3, 32, 32) and fine.tolist() == [0, 99, 50, 3, 4] and coarse.tolist() == [0, 19, 10, 1, 2]
    assert load_cifar100(tmp_path, train=False)[1].tolist() == [7, 8]
    with pytest.raises(ValueError, match="label"):
        load_cifar100(tmp_path, label="medium")


def test_missing_cifar_raises_with_instructions(tmp_path: Path, no_torchvision) -> None:
    with pytest.raises(DataUnavailableError) as info:
        load_cifar10(tmp_path / "empty")
    message = str(info.value)
    assert "cifar-10-batches-py" in message and "data_batch_1" in message and str(tmp_path / "empty") in message
    assert "DEDL_DATA" in message and "torchvision" in message
    with pytest.raises(DataUnavailableError, match="cifar-100-python"):
        load_cifar100(tmp_path / "empty", download=False)


def test_no_download_attempt_unless_asked(tmp_path: Path, monkeypatch) -> None:
    calls = []

    def fake_download(dataset, root, train):
        calls.append((dataset, root, train))
        raise OSError("network unreachable")  # what an offline machine reports

    monkeypatch.setattr(data, "_torchvision_download", fake_download)
    with pytest.raises(DataUnavailableError, match="download=False"):
        load_cifar10(tmp_path, download=False)
    assert calls == []
    with pytest.raises(DataUnavailableError, match="network unreachable"):
        load_cifar10(tmp_path, train=False)
    assert calls == [("CIFAR10", tmp_path, False)]


def test_corrupt_cifar_batch_is_reported(tmp_path: Path) -> None:
    write_pickle(tmp_path / "cifar-10-batches-py" / "test_batch", {b"pixels": fake_images(2, 0)})
    with pytest.raises(ValueError, match="not a CIFAR batch"):
        load_cifar10(tmp_path, train=False, download=False)


# --------------------------------------------------------------------------------------------------
# MNIST
# --------------------------------------------------------------------------------------------------


def idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    return header + array.astype(np.uint8).tobytes()


@pytest.fixture
def mnist_root(tmp_path: Path) -> Path:
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    (raw / "train-images-idx3-ubyte").write_bytes(idx_bytes(rng.integers(0, 256, (6, 28, 28))))
    (raw / "train-labels-idx1-ubyte").write_bytes(idx_bytes(np.arange(6)))
    with gzip.open(raw / "t10k-images-idx3-ubyte.gz", "wb") as fh:  # compressed files are read too
        fh.write(idx_bytes(np.full((2, 28, 28), 255)))
    with gzip.open(raw / "t10k-labels-idx1-ubyte.gz", "wb") as fh:
        fh.write(idx_bytes(np.array([3, 4])))
    return tmp_path


def test_load_mnist_reads_idx_files(mnist_root: Path, no_torchvision) -> None:
    x, y = load_mnist(mnist_root)
    assert x.shape == (6, 1, 28, 28) and x.dtype == torch.float32 and y.tolist() == list(range(6))
    x_test, y_test = load_mnist(mnist_root, train=False)
    assert y_test.tolist() == [3, 4]
    expected = (1.0 - data.MNIST_MEAN[0]) / data.MNIST_STD[0]
    assert torch.allclose(x_test, torch.full_like(x_test, expected))
    plain, _ = load_mnist(mnist_root, train=False, normalize=False)
    assert torch.all(plain == 1.0)


def test_read_idx_checks_its_header(tmp_path: Path) -> None:
    good = tmp_path / "good"
    good.write_bytes(idx_bytes(np.arange(12).reshape(3, 4)))
    assert read_idx(good).tolist() == np.arange(12).reshape(3, 4).tolist()
    bad = tmp_path / "bad"
    bad.write_bytes(b"\x01\x02\x08\x01" + (3).to_bytes(4, "big") + b"abc")
    with pytest.raises(ValueError, match="magic"):
        read_idx(bad)
    short = tmp_path / "short"
    short.write_bytes(idx_bytes(np.arange(12))[:-1])
    with pytest.raises(ValueError, match="shape"):
        read_idx(short)


def test_missing_mnist_raises_with_instructions(tmp_path: Path, no_torchvision) -> None:
    with pytest.raises(DataUnavailableError) as info:
        load_mnist(tmp_path)
    message = str(info.value)
    assert "train-images-idx3-ubyte" in message and "MNIST" in message and str(tmp_path) in message
