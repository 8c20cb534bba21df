"""Run logging: ``metrics.jsonl`` (one JSON object per logged step) and TensorBoard events."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any


class RunLogger:
    """Append metrics to ``RUN/metrics.jsonl`` and to TensorBoard events under ``RUN/tensorboard``.

    Only plain numbers are logged; call it at logging intervals (turning tensors into numbers synchronises
    the device, so the hot loop should not do it every step).
    """

    def __init__(self, run_dir: str | Path, tensorboard: bool = True) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._jsonl = open(self.run_dir / "metrics.jsonl", "a", buffering=1)
        self._tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(self.run_dir / "tensorboard"))

    def log(self, step: int, metrics: dict[str, Any], prefix: str = "") -> None:
        """Record ``metrics`` (numbers; tensors are converted) at ``step``."""
        row: dict[str, Any] = {"step": step}
        for key, value in metrics.items():
            value = value.item() if hasattr(value, "item") else value
            row[prefix + key] = value
            if self._tb is not None and isinstance(value, (int, float)) and math.isfinite(value):
                self._tb.add_scalar(prefix + key, value, step)
        self._jsonl.write(json.dumps(row) + "\n")

    def close(self) -> None:
        self._jsonl.close()
        if self._tb is not None:
            self._tb.close()

    def __enter__(self) -> RunLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
