"""Checkpoints: safetensors weights plus a JSON sidecar, written atomically; safe loading of foreign files.

A checkpoint is a folder::

    step_0004000/
      model.safetensors     the trained weights
      ema.safetensors       the EMA weights (when an EMA is kept)
      train_state.pt        optimizer, scheduler, RNG states (tensors and plain containers only)
      meta.json             format, kind, step, model spec, resolved config, SHA-256 of every file above

``meta.json`` holds the model's architecture spec, so ``orwcfm sample --ckpt DIR`` rebuilds the network without
the user repeating its arguments. The folder is written under a temporary name, every file is fsynced, and
only then renamed into place: a crash mid-write never leaves a half-written checkpoint under a real name.

Nothing here ever unpickles arbitrary objects: weights come from safetensors, and every ``torch.load`` uses
``weights_only=True`` (tensors, numbers, strings and containers only).
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .errors import UserError
from .models import ModelSpec, build_model

FORMAT = "orwcfm-checkpoint"
FORMAT_VERSION = 1
META = "meta.json"
MODEL_FILE = "model.safetensors"
EMA_FILE = "ema.safetensors"
POLICY_FILE = "policy.safetensors"
STATE_FILE = "train_state.pt"
RUN_SUBDIR = "checkpoints"


@dataclass(frozen=True)
class Checkpoint:
    """A loaded checkpoint.

    Attributes:
        path: its folder.
        meta: the parsed ``meta.json`` (``kind``, ``step``, ``model_spec``, ``config``, ...).
        spec: the architecture, enough to rebuild the network (``None`` for a user's own model).
        weights: the trained weights.
        ema_weights: the EMA weights, or ``None``.
        policy_weights: the sampling policy's weights of a fine-tuning run, or ``None``.
    """

    path: Path
    meta: dict[str, Any]
    spec: ModelSpec | None
    weights: dict[str, torch.Tensor]
    ema_weights: dict[str, torch.Tensor] | None
    policy_weights: dict[str, torch.Tensor] | None = None

    @property
    def step(self) -> int:
        return int(self.meta.get("step", 0))

    def state_dict(self, which: str = "ema") -> dict[str, torch.Tensor]:
        """The weights to use: ``ema`` (falls back to ``raw`` when no EMA was kept) or ``raw``."""
        if which not in ("ema", "raw"):
            raise UserError(f"weights must be 'ema' or 'raw', got '{which}'")
        if which == "ema" and self.ema_weights is not None:
            return self.ema_weights
        return self.weights

    def build_model(self, which: str = "ema", device: torch.device | str = "cpu") -> nn.Module:
        """Rebuild the network from the spec and load the chosen weights; returned in eval mode."""
        if self.spec is None:
            raise UserError(f"checkpoint {self.path} holds a user model without a spec: build the model yourself and load its weights")
        model = build_model(self.spec)
        load_weights(model, self.state_dict(which), source=str(self.path))
        return model.to(device).eval()

    def train_state(self) -> dict[str, Any] | None:
        """Optimizer/scheduler/RNG state for resuming, or ``None``. Loaded with ``weights_only=True``."""
        path = self.path / STATE_FILE
        if not path.exists():
            return None
        return torch.load(path, map_location="cpu", weights_only=True)


# ---------------------------------------------------------------------------------------------------------------
# Writing.


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _plain_tensors(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # safetensors refuses tensors that share memory (tied weights); independent CPU copies are always accepted.
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in state.items()}


def save_checkpoint(
    path: str | Path,
    *,
    model: nn.Module,
    spec: ModelSpec | None,
    kind: str,
    step: int,
    config: dict[str, Any],
    ema_model: nn.Module | None = None,
    policy_model: nn.Module | None = None,
    train_state: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint folder at ``path`` atomically (an existing one is replaced only once complete).

    Args:
        model: the trained network (its ``state_dict`` is saved).
        spec: its architecture spec (``None`` for user models that our registry cannot rebuild).
        kind: what produced it, e.g. ``pretrain`` or ``finetune``.
        step: the optimisation step.
        config: the resolved config (JSON-serialisable).
        ema_model: the EMA copy of ``model``, if any.
        policy_model: the frozen sampling policy of a fine-tuning run, if any.
        train_state: optimizer/scheduler/RNG state for resuming (tensors and plain containers only).
        extra: more JSON-serialisable metadata (data shape, reward, ...).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        files = {MODEL_FILE: _plain_tensors(model.state_dict())}
        if ema_model is not None:
            files[EMA_FILE] = _plain_tensors(ema_model.state_dict())
        if policy_model is not None:
            files[POLICY_FILE] = _plain_tensors(policy_model.state_dict())
        for name, tensors in files.items():
            save_file(tensors, str(tmp / name))
        if train_state is not None:
            torch.save(train_state, tmp / STATE_FILE)
        written = [p for p in (MODEL_FILE, EMA_FILE, POLICY_FILE, STATE_FILE) if (tmp / p).exists()]
        meta = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "kind": kind,
            "step": step,
            "model_spec": spec.to_dict() if spec is not None else None,
            "config": config,
            "files": {name: _sha256(tmp / name) for name in written},
            **(extra or {}),
        }
        (tmp / META).write_text(json.dumps(meta, indent=2, sort_keys=True))
        for name in [*written, META]:
            _fsync(tmp / name)
        if path.exists():
            # Move the old one aside first so that at every instant one complete checkpoint exists under a name.
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.rename(path, old)
            os.rename(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, path)
        _fsync(path.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def step_dir(run_dir: str | Path, step: int) -> Path:
    """Where a run keeps the checkpoint of ``step``: ``RUN/checkpoints/step_0000123``."""
    return Path(run_dir) / RUN_SUBDIR / f"step_{step:07d}"


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """The run's checkpoint folders, oldest first (temporary folders of unfinished writes are ignored)."""
    folder = Path(run_dir) / RUN_SUBDIR
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_dir() and p.name.startswith("step_"))


def prune_checkpoints(run_dir: str | Path, keep: int) -> None:
    """Delete all but the newest ``keep`` checkpoints of a run."""
    for old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------------------
# Reading.


def _read_meta(path: Path) -> dict[str, Any]:
    try:
        meta = json.loads((path / META).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise UserError(f"checkpoint {path}: cannot read {META} ({err})") from None
    if meta.get("format") != FORMAT:
        raise UserError(f"checkpoint {path}: {META} is not an orwcfm checkpoint (format={meta.get('format')!r})")
    if meta.get("version", 0) > FORMAT_VERSION:
        raise UserError(f"checkpoint {path}: format version {meta['version']} is newer than this orwcfm understands ({FORMAT_VERSION})")
    return meta


def verify_checkpoint(path: str | Path) -> dict[str, Any]:
    """Check every file against its SHA-256 in the sidecar; return the sidecar or raise UserError."""
    path = Path(path)
    meta = _read_meta(path)
    for name, digest in meta.get("files", {}).items():
        file = path / name
        if not file.exists():
            raise UserError(f"checkpoint {path}: file {name} is missing")
        if _sha256(file) != digest:
            raise UserError(f"checkpoint {path}: file {name} is corrupted (its SHA-256 does not match {META})")
    return meta


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder from either a checkpoint folder or a run folder (its newest intact checkpoint).

    When the newest checkpoint of a run is damaged (an interrupted copy, a bad disk), the previous intact one
    is used and a warning says so.
    """
    path = Path(path)
    if (path / META).exists():
        return path
    candidates = list_checkpoints(path)
    if not candidates:
        raise UserError(f"no checkpoint found at {path}: expected a folder with {META} or a run folder with {RUN_SUBDIR}/step_*")
    for i, candidate in enumerate(reversed(candidates)):
        try:
            verify_checkpoint(candidate)
        except UserError as err:
            warnings.warn(f"skipping damaged checkpoint: {err}", stacklevel=2)
            continue
        if i:
            warnings.warn(f"using the older checkpoint {candidate} because newer ones are damaged", stacklevel=2)
        return candidate
    raise UserError(f"every checkpoint under {path / RUN_SUBDIR} is damaged")


def load_checkpoint(path: str | Path, map_location: torch.device | str = "cpu", verify: bool = True) -> Checkpoint:
    """Load a checkpoint folder (or a run folder's newest intact checkpoint)."""
    path = resolve_checkpoint(path)
    meta = verify_checkpoint(path) if verify else _read_meta(path)
    spec = ModelSpec.from_dict(meta["model_spec"]) if meta.get("model_spec") is not None else None
    device = str(map_location)

    def optional(name: str) -> dict[str, torch.Tensor] | None:
        return load_file(str(path / name), device=device) if (path / name).exists() else None

    return Checkpoint(path=path, meta=meta, spec=spec, weights=load_file(str(path / MODEL_FILE), device=device),
                      ema_weights=optional(EMA_FILE), policy_weights=optional(POLICY_FILE))


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """``model.load_state_dict(state)``, with an error that names the missing, unexpected and mis-shaped tensors."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = [f"{k} {tuple(state[k].shape)} vs model {tuple(v.shape)}" for k, v in own.items() if k in state and state[k].shape != v.shape]
    if missing or unexpected or mismatched:
        def show(items: list[str]) -> str:
            return ", ".join(items[:5]) + (f" (+{len(items) - 5} more)" if len(items) > 5 else "")

        parts = [f"{label}: {show(items)}" for label, items in
                 (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched)) if items]
        raise UserError(f"weights from {source} do not fit this model (another architecture?) - {'; '.join(parts)}")
    model.load_state_dict(state)


def load_foreign_state_dict(path: str | Path, key: str = "ema_model", map_location: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """Weights from a torch ``.pt`` file, e.g. torchcfm's ``{"net_model", "ema_model", "optim", ...}`` checkpoints.

    The file is read with ``weights_only=True`` (no code runs). ``key`` picks the entry of a dict of state dicts
    (``ema_model`` by default, ``net_model`` for the raw weights); a file that is itself a state dict is used as
    is. A ``module.`` prefix left by DataParallel/DDP is removed. Optimizer and scheduler entries are ignored.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint file not found: {path}")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise UserError(
            f"refused to load {path}: it contains Python objects other than tensors and plain containers, "
            f"and loading them could run code ({str(err).splitlines()[0][:200]})"
        ) from None
    except (RuntimeError, EOFError, OSError) as err:
        raise UserError(f"cannot read {path} as a torch checkpoint: {str(err).splitlines()[0][:200]}") from None
    if not isinstance(obj, dict):
        raise UserError(f"{path} holds a {type(obj).__name__}, expected a dict of tensors or of state dicts")
    if all(isinstance(v, torch.Tensor) for v in obj.values()):
        state = obj
    else:
        if key not in obj:
            entries = sorted(k for k, v in obj.items() if isinstance(v, dict))
            raise UserError(f"{path} has no entry '{key}'; its state-dict entries are: {', '.join(entries) or 'none'}")
        state = obj[key]
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise UserError(f"{path}: entry '{key}' is not a state dict of tensors")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def save_or_explain(write: Callable[[], Path], path: str | Path, run_dir: str | Path) -> Path:
    """Run ``write()`` (a checkpoint save); a failed write (full disk, lost mount) becomes one clear
    :class:`UserError` that names the checkpoint kept. The save is atomic, so the previous checkpoints are intact."""
    try:
        return write()
    except OSError as err:
        kept = list_checkpoints(run_dir)
        previous = f"the newest intact checkpoint is {kept[-1]}" if kept else "no earlier checkpoint exists"
        raise UserError(f"cannot write checkpoint {path}: {err.strerror or err}; the run stopped and {previous}; "
                        "free the space and continue with --resume") from None


def host_rng_state() -> dict[str, Any]:
    """Python's and NumPy's global random states as tensors and plain numbers (loadable with ``weights_only``).

    The toolkit itself draws only from torch generators, but a user's reward may call ``random`` or
    ``np.random``: saving these too makes a resumed run repeat exactly what the uninterrupted one would do.
    """
    import random

    import numpy as np

    version, internal, gauss = random.getstate()
    _, keys, pos, has_gauss, cached = np.random.get_state()
    return {"python_version": version, "python_state": torch.tensor(internal, dtype=torch.int64), "python_gauss": gauss,
            "numpy_keys": torch.from_numpy(keys.astype(np.int64)), "numpy_pos": int(pos),
            "numpy_has_gauss": int(has_gauss), "numpy_cached": float(cached)}


def set_host_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`host_rng_state` saved."""
    import random

    import numpy as np

    random.setstate((state["python_version"], tuple(int(v) for v in state["python_state"]), state["python_gauss"]))
    np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype(np.uint32), state["numpy_pos"],
                         state["numpy_has_gauss"], state["numpy_cached"]))
