"""Run logging: ``metrics.jsonl`` (one JSON object per logged step), TensorBoard events, and wandb on request."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import UserError


class RunLogger:
    """Append metrics to ``RUN/metrics.jsonl``, to TensorBoard events under ``RUN/tensorboard`` and, when a
    ``wandb_project`` is given, to Weights & Biases (``WANDB_MODE=offline`` works without a network).

    Only plain numbers are logged; call it at logging intervals (turning tensors into numbers synchronises
    the device, so the hot loop should not do it every step).
    """

    def __init__(self, run_dir: str | Path, tensorboard: bool = True, wandb_project: str | None = None,
                 run_name: str | None = None, config: dict[str, Any] | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._jsonl = open(self.run_dir / "metrics.jsonl", "a", buffering=1)
        self._tb = None
        self._wandb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(self.run_dir / "tensorboard"))
        if wandb_project is not None:
            try:
                import wandb
            except ImportError:
                raise UserError("use_wandb needs the wandb package: pip install wandb "
                                "(set WANDB_MODE=offline to log without a network)") from None
            self._wandb = wandb.init(project=wandb_project, name=run_name, config=config, dir=str(self.run_dir))

    def log(self, step: int, metrics: dict[str, Any], prefix: str = "") -> None:
        """Record ``metrics`` (numbers; tensors are converted) at ``step``."""
        row: dict[str, Any] = {"step": step}
        for key, value in metrics.items():
            value = value.item() if hasattr(value, "item") else value
            row[prefix + key] = value
            if self._tb is not None and isinstance(value, (int, float)) and math.isfinite(value):
                self._tb.add_scalar(prefix + key, value, step)
        self._jsonl.write(json.dumps(row) + "\n")
        if self._wandb is not None:
            self._wandb.log({k: v for k, v in row.items() if k != "step"}, step=step)

    def note(self, step: int, text: str) -> None:
        """A sentence for the reader of the run (``RUN/notes.txt``, TensorBoard text and standard error)."""
        import sys

        from tqdm.auto import tqdm

        with open(self.run_dir / "notes.txt", "a") as f:
            f.write(f"step {step}: {text}\n")
        if self._tb is not None:
            self._tb.add_text("notes", text, step)
        tqdm.write(f"note (step {step}): {text}", file=sys.stderr)

    def close(self) -> None:
        self._jsonl.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()

    def __enter__(self) -> RunLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class MetricsFile:
    """What :func:`read_metrics` found in a ``metrics.jsonl``.

    Attributes:
        rows: the JSON objects, in file order.
        bad_lines: 1-based numbers of the lines that are not a JSON object (a run killed mid-write leaves one).
        error: why the file could not be read at all (missing, unreadable), else None.
    """

    rows: list[dict[str, Any]] = field(default_factory=list)
    bad_lines: list[int] = field(default_factory=list)
    error: str | None = None


def read_metrics(path: str | Path) -> MetricsFile:
    """Read a ``metrics.jsonl`` written by :class:`RunLogger`; never raises for a missing or damaged file.

    Blank lines are skipped; a line that is not a JSON object is recorded in ``bad_lines`` and skipped, so a run
    still being written (or cut off) reads up to its last whole line.
    """
    try:
        # errors="replace": a byte cut in half by a crash spoils its line, not the whole file
        lines = Path(path).read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as err:
        return MetricsFile(error=err.strerror or str(err))
    out = MetricsFile()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        if isinstance(row, dict):
            out.rows.append(row)
        else:
            out.bad_lines.append(number)
    return out
