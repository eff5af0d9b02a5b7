import gzip
import logging
import socket
import subprocess
import sys
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch

from fedml.data.mnist import MEAN, MIRROR, STD, load_embedded_mnist, load_mnist, read_idx
from fedml.errors import DataError

STEMS = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}


def idx_bytes(array: np.ndarray, type_code: int = 0x08) -> bytes:
    dtype = {0x08: ">u1", 0x0C: ">i4"}[type_code]
    header = bytes([0, 0, type_code, array.ndim]) + np.array(array.shape, dtype=">u4").tobytes()
    return header + array.astype(dtype).tobytes()


def small_mnist(seed: int = 0) -> dict[str, np.ndarray]:
    gen = np.random.default_rng(seed)
    return {
        "train_x": gen.integers(0, 256, size=(6, 28, 28), dtype=np.uint8),
        "train_y": np.array([0, 1, 2, 3, 4, 9], dtype=np.uint8),
        "test_x": gen.integers(0, 256, size=(4, 28, 28), dtype=np.uint8),
        "test_y": np.array([5, 6, 7, 8], dtype=np.uint8),
    }


def write_idx(cache: Path, arrays: dict[str, np.ndarray], compress: set[str]) -> Path:
    raw = cache / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for key, array in arrays.items():
        data = idx_bytes(array)
        if key in compress:
            (raw / f"{STEMS[key]}.gz").write_bytes(gzip.compress(data))
        else:
            (raw / STEMS[key]).write_bytes(data)
    return raw


def pixels(x: torch.Tensor) -> np.ndarray:
    return np.rint((x.squeeze(1).numpy() * STD + MEAN) * 255).astype(np.int64)


def test_embedded_subset_loads_without_cache_or_network(tmp_path: Path) -> None:
    raw = load_mnist(tmp_path, download=False)

    assert raw.train_x.shape == (4000, 1, 28, 28)
    assert raw.test_x.shape == (1000, 1, 28, 28)
    assert raw.train_x.dtype == torch.float32
    assert raw.train_y.dtype == torch.int64
    assert torch.bincount(raw.train_y).tolist() == [400] * 10
    assert torch.bincount(raw.test_y).tolist() == [100] * 10
    assert abs(raw.train_x.mean().item()) < 0.1
    assert raw.train_x.min().item() == pytest.approx(-MEAN / STD, abs=1e-5)
    assert raw.train_x.max().item() == pytest.approx((1 - MEAN) / STD, abs=1e-5)
    assert "embedded" in raw.source


def test_embedded_subset_pixels_look_like_digits() -> None:
    raw = load_embedded_mnist()
    images = pixels(raw.train_x)

    class_means = [images[raw.train_y.numpy() == c].mean() for c in range(10)]
    # ones have the fewest lit pixels, zeros the most: a mislabelled or scrambled file breaks this
    assert int(np.argmin(class_means)) == 1
    assert int(np.argmax(class_means)) == 0
    border = np.concatenate([images[:, 0, :], images[:, -1, :], images[:, :, 0], images[:, :, -1]])
    assert border.mean() < 1.0


def test_no_cache_dir_uses_embedded_subset() -> None:
    assert "embedded" in load_mnist(None, download=True).source


@pytest.mark.parametrize(
    "compress",
    [set(), set(STEMS), {"train_x", "test_y"}],
    ids=["raw", "gz", "mixed"],
)
def test_idx_files_in_torchvision_layout_are_used(tmp_path: Path, compress: set[str]) -> None:
    arrays = small_mnist()
    raw_dir = write_idx(tmp_path, arrays, compress)

    raw = load_mnist(tmp_path, download=False)

    assert str(raw_dir) in raw.source
    assert raw.train_x.shape == (6, 1, 28, 28)
    assert raw.test_x.shape == (4, 1, 28, 28)
    assert np.array_equal(pixels(raw.train_x), arrays["train_x"])
    assert np.array_equal(pixels(raw.test_x), arrays["test_x"])
    assert raw.train_y.tolist() == [0, 1, 2, 3, 4, 9]
    assert raw.test_y.tolist() == [5, 6, 7, 8]
    assert raw.train_y.dtype == torch.int64


def test_cache_dir_with_tilde_is_expanded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    write_idx(tmp_path / "cache", small_mnist(), set())

    raw = load_mnist("~/cache", download=False)

    assert raw.train_x.shape[0] == 6


def test_incomplete_idx_files_fall_back_to_embedded(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    arrays = small_mnist()
    del arrays["test_y"]
    write_idx(tmp_path, arrays, set())

    with caplog.at_level(logging.INFO, logger="fedml.data.mnist"):
        raw = load_mnist(tmp_path, download=False)

    assert "embedded" in raw.source
    assert "t10k-labels-idx1-ubyte" in caplog.text


@pytest.mark.parametrize(
    "damage",
    [
        lambda data: b"\x01\x02" + data[2:],
        lambda data: data[:-5],
        lambda data: data[:6],
        lambda data: b"",
    ],
    ids=["bad-magic", "truncated-data", "truncated-header", "empty"],
)
def test_corrupt_idx_file_raises_data_error_naming_it(tmp_path: Path, damage) -> None:
    raw_dir = write_idx(tmp_path, small_mnist(), set())
    bad = raw_dir / STEMS["train_x"]
    bad.write_bytes(damage(bad.read_bytes()))

    with pytest.raises(DataError, match=STEMS["train_x"]):
        load_mnist(tmp_path, download=False)


def test_corrupt_gzip_raises_data_error_naming_it(tmp_path: Path) -> None:
    raw_dir = write_idx(tmp_path, small_mnist(), {"test_x"})
    bad = raw_dir / f"{STEMS['test_x']}.gz"
    bad.write_bytes(b"\x1f\x8b not really gzip")

    with pytest.raises(DataError, match=f"{STEMS['test_x']}.gz"):
        load_mnist(tmp_path, download=False)


def test_wrong_image_size_or_label_count_raises(tmp_path: Path) -> None:
    arrays = small_mnist()
    arrays["train_y"] = arrays["train_y"][:5]
    write_idx(tmp_path, arrays, set())

    with pytest.raises(DataError, match=STEMS["train_y"]):
        load_mnist(tmp_path, download=False)

    arrays = small_mnist()
    arrays["test_x"] = np.zeros((4, 27, 27), dtype=np.uint8)
    write_idx(tmp_path, arrays, set())

    with pytest.raises(DataError, match=STEMS["test_x"]):
        load_mnist(tmp_path, download=False)


def test_read_idx_parses_header_dims_and_type(tmp_path: Path) -> None:
    values = np.arange(-6, 6, dtype=np.int32).reshape(2, 3, 2)
    path = tmp_path / "values.idx"
    path.write_bytes(idx_bytes(values, type_code=0x0C))

    parsed = read_idx(path)

    assert parsed.shape == (2, 3, 2)
    assert np.array_equal(parsed, values)


class FakeMNIST:
    """Stands in for torchvision.datasets.MNIST; records calls and optionally writes IDX files."""

    calls: ClassVar[list[str]] = []
    writes: ClassVar[bool] = True

    def __init__(self, root: str, train: bool = True, download: bool = False) -> None:
        FakeMNIST.calls.append(root)
        if not FakeMNIST.writes:
            raise RuntimeError("Error downloading train-images-idx3-ubyte.gz")
        write_idx(Path(root), small_mnist(), set(STEMS))


@pytest.fixture
def fake_torchvision(monkeypatch: pytest.MonkeyPatch) -> type[FakeMNIST]:
    import torchvision.datasets

    FakeMNIST.calls = []
    FakeMNIST.writes = True
    monkeypatch.setattr(torchvision.datasets, "MNIST", FakeMNIST)
    return FakeMNIST


def test_download_with_unreachable_network_falls_back_to_embedded(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    fake_torchvision: type[FakeMNIST],
    caplog: pytest.LogCaptureFixture,
) -> None:
    probes = []

    def refuse(address, timeout=None, *args, **kwargs):
        probes.append((address, timeout))
        raise OSError("network is unreachable")

    monkeypatch.setattr(socket, "create_connection", refuse)

    with caplog.at_level(logging.INFO, logger="fedml.data.mnist"):
        raw = load_mnist(tmp_path, download=True)

    assert "embedded" in raw.source
    assert probes == [(("ossci-datasets.s3.amazonaws.com", 443), 1.5)]
    assert fake_torchvision.calls == []
    assert "not reachable" in caplog.text


def test_download_when_reachable_then_reads_idx(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_torchvision: type[FakeMNIST]
) -> None:
    monkeypatch.setattr(socket, "create_connection", lambda *args, **kwargs: socket.socket())

    raw = load_mnist(tmp_path / "cache", download=True)

    assert fake_torchvision.calls == [str(tmp_path / "cache")]
    assert raw.source.startswith("torchvision download")
    assert raw.train_x.shape == (6, 1, 28, 28)


def test_failed_download_falls_back_to_embedded(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    fake_torchvision: type[FakeMNIST],
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(socket, "create_connection", lambda *args, **kwargs: socket.socket())
    fake_torchvision.writes = False

    with caplog.at_level(logging.WARNING, logger="fedml.data.mnist"):
        raw = load_mnist(tmp_path, download=True)

    assert "embedded" in raw.source
    assert "failed" in caplog.text


def test_probed_mirror_is_one_torchvision_downloads_from() -> None:
    from torchvision.datasets import MNIST

    assert MIRROR in MNIST.mirrors


def test_importing_fedml_data_does_not_import_torchvision() -> None:
    code = "import sys, fedml.data; print('torchvision' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).parents[2],
    )

    assert result.stdout.strip() == "False"
