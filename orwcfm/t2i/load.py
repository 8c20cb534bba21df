"""Loading a diffusers pipeline offline: a ``save_pretrained`` folder, or a hub id already in the local cache.

Nothing is downloaded (``local_files_only``). The folder's ``model_index.json`` is read first, so that a missing
component or an unsupported transformer is one line naming it, before any weights are read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import UserError
from .family import family_named

# SD3's T5 encoder is optional: without it the pipeline pads its place with zeros (as diffusers' own tests run)
OPTIONAL = ("text_encoder_3", "tokenizer_3", "image_encoder", "feature_extractor")


@dataclass(frozen=True)
class PipelineFolder:
    """A checked pipeline folder: where it is, its transformer class and which optional components it lacks."""

    path: Path
    transformer_class: str
    pipeline_class: str
    absent: tuple[str, ...]


# builtin:NAME -> the writer of a tiny random pipeline (orwcfm.t2i.tiny), written into the cache on first use: the
# smoke runs and tests of the text-to-image path need no download
BUILTIN_PIPELINES = {"tiny-sd3": "write_tiny_sd3", "tiny-flux": "write_tiny_flux"}


def builtin_pipeline(name: str, cache: str | Path | None = None) -> Path:
    """The folder of the built-in tiny pipeline ``name`` (written once into ``cache/t2i/NAME``, atomically)."""
    import shutil
    import tempfile

    from ..assets import cache_dir
    from . import tiny

    if name not in BUILTIN_PIPELINES:
        raise UserError(f"unknown built-in pipeline builtin:{name}; built-in: "
                        f"{', '.join('builtin:' + n for n in BUILTIN_PIPELINES)}")
    folder = cache_dir(cache) / "t2i" / name
    if not (folder / "model_index.json").is_file():
        folder.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=folder.parent) as tmp:
            getattr(tiny, BUILTIN_PIPELINES[name])(Path(tmp) / "pipe")
            shutil.rmtree(folder, ignore_errors=True)
            (Path(tmp) / "pipe").rename(folder)
    return folder


def resolve_source(source: str | Path, cache: str | Path | None = None) -> Path:
    """The local folder of ``source``: the folder itself, ``builtin:NAME`` (a tiny random pipeline, written into the
    cache on first use), or the cached snapshot of a hub id (never downloaded)."""
    if str(source).startswith("builtin:"):
        return builtin_pipeline(str(source)[len("builtin:"):], cache)
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    if path.exists() or str(source).startswith((".", "/", "~")) or str(source).count("/") != 1:
        raise UserError(f"model {source!s} is neither a pipeline folder nor a hub id (owner/name) in the local cache")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(str(source), local_files_only=True))
    except LocalEntryNotFoundError:
        raise UserError(f"hub id {source} is not in the local Hugging Face cache, and nothing is downloaded: "
                        "download it once elsewhere, or pass the pipeline folder") from None


def inspect_folder(source: str | Path, cache: str | Path | None = None) -> PipelineFolder:
    """Check a pipeline folder without loading weights: its transformer is supported, every needed component is there."""
    path = resolve_source(source, cache)
    index_file = path / "model_index.json"
    if not index_file.is_file():
        raise UserError(f"{path} is not a diffusers pipeline folder (no model_index.json)")
    index = json.loads(index_file.read_text())
    transformer = index.get("transformer")
    name = transformer[1] if isinstance(transformer, list) and len(transformer) == 2 else None
    family = family_named(name, where=f"{path}: ")
    pipeline_class, needed = family.pipeline_class, family.needed
    absent = []
    for component in (*needed, *(k for k in index if k in OPTIONAL)):
        listed = index.get(component)
        present = isinstance(listed, list) and listed[0] is not None and (path / component).is_dir()
        if not present and component in needed:
            raise UserError(f"pipeline folder {path} lacks the component '{component}' that {pipeline_class} needs")
        if not present:
            absent.append(component)
    return PipelineFolder(path, name, pipeline_class, tuple(absent))


def load_pipeline(source: str | Path, *, dtype: torch.dtype | None = None, device: str | torch.device = "cpu",
                  cache: str | Path | None = None, progress: bool = True) -> Any:
    """The pipeline of ``source`` (checked by :func:`inspect_folder`), its weights in ``dtype`` (default: as saved),
    on ``device``; absent optional components are passed as None. ``progress=False`` silences diffusers' and
    transformers' loading bars (for this process)."""
    import diffusers

    folder = inspect_folder(source, cache)
    if not progress:
        import transformers

        diffusers.utils.logging.disable_progress_bar()
        transformers.utils.logging.disable_progress_bar()
    cls = getattr(diffusers, folder.pipeline_class)
    pipe = cls.from_pretrained(folder.path, local_files_only=True, dtype=dtype, **{name: None for name in folder.absent})
    return pipe.to(device)
