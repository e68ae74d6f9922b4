"""Training metrics: one JSON line per log call, TensorBoard scalars and a tqdm progress bar.

``run_dir/metrics.jsonl`` is the record of a run (appended to on resume, strict JSON on every line:
non-finite floats are written as ``null`` and their keys listed under ``"nonfinite"``);
``run_dir/tensorboard`` holds the same finite scalars for TensorBoard. Only the main process writes
anything, so every process of a multi-host run can call ``log`` unconditionally. ``truncate_metrics``
drops the rows past a checkpoint's step so a resumed run does not log those steps twice.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import numpy as np

PathLike = Union[str, os.PathLike]
METRICS_FILE = "metrics.jsonl"
SAMPLES_FILE = "samples.jsonl"  # example rollouts (prompt, response, reward) of RL steps
TENSORBOARD_DIR = "tensorboard"
POSTFIX_KEYS = ("loss", "reward_mean", "accuracy", "step_time")


def _to_python(value: Any) -> Any:
    """Numpy/jax scalars (and 0-d or 1-element arrays) -> Python int/float/bool; str and None as is."""
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    array = np.asarray(value)
    if array.size != 1:
        raise ValueError(f"metric values must be scalars, got shape {array.shape}")
    return array.reshape(()).item()


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class MetricsLogger:
    """Writes metrics of training steps to JSONL and TensorBoard and drives a progress bar."""

    def __init__(
        self,
        run_dir: PathLike,
        *,
        total_steps: int,
        jsonl: bool = True,
        tensorboard: bool = True,
        progress: bool = True,
        is_main: bool = True,
        start_step: int = 0,
        desc: str = "train",
    ):
        self.run_dir, self.is_main = Path(run_dir), is_main
        self._file = self._writer = self._bar = None
        if not is_main:
            return
        if jsonl or tensorboard:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        if jsonl:
            self._file = self.run_dir / METRICS_FILE  # opened per line: truncate_metrics may replace the file
        if tensorboard:
            from tensorboardX import SummaryWriter

            self._writer = SummaryWriter(str(self.run_dir / TENSORBOARD_DIR))
        if progress and os.environ.get("GRLHF_NO_PROGRESS", "") not in ("1", "true", "True"):
            from tqdm import tqdm

            self._bar = tqdm(total=total_steps, initial=start_step, desc=desc, file=sys.stderr, dynamic_ncols=True)

    def log(self, step: int, metrics: Mapping[str, Any], *, stage: str = "") -> None:
        """Records ``metrics`` of ``step`` (under ``stage/`` in TensorBoard when a stage is given)."""
        if not self.is_main:
            return
        step = int(step)
        values = {str(key): _to_python(value) for key, value in metrics.items()}
        nonfinite = [key for key, value in values.items() if isinstance(value, float) and not math.isfinite(value)]
        if self._file is not None:
            row: dict[str, Any] = {"step": step, "stage": stage, "time": time.time()}
            row.update({key: None if key in nonfinite else value for key, value in values.items()})
            if nonfinite:
                row["nonfinite"] = nonfinite
            with open(self._file, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(row, allow_nan=False) + "\n")
        if self._writer is not None:
            for key, value in values.items():
                if _is_number(value) and key not in nonfinite:
                    self._writer.add_scalar(f"{stage}/{key}" if stage else key, value, step)
            self._writer.flush()
        if self._bar is not None:
            postfix = {key: values[key] for key in POSTFIX_KEYS if _is_number(values.get(key))}
            if postfix:
                self._bar.set_postfix({k: f"{v:.4g}" for k, v in postfix.items()}, refresh=False)
            self.set_progress(step)

    def log_samples(self, step: int, samples: list[Mapping[str, Any]], *, stage: str = "") -> None:
        """Appends example rollouts of ``step`` to ``samples.jsonl`` (one row each), with the JSONL metrics."""
        if not self.is_main or self._file is None or not samples:
            return
        with open(self.run_dir / SAMPLES_FILE, "a", encoding="utf-8") as handle:
            for sample in samples:
                row = {"step": int(step), "stage": stage, **{str(k): _to_python(v) for k, v in sample.items()}}
                handle.write(json.dumps(row, allow_nan=False, default=str) + "\n")

    def set_progress(self, step: int, total_steps: Optional[int] = None, desc: Optional[str] = None) -> None:
        """Moves the bar to ``step`` (of a new ``total_steps``/``desc`` when given, e.g. a new stage)."""
        if self._bar is None:
            return
        if total_steps is not None:
            self._bar.total = int(total_steps)
        if desc is not None:
            self._bar.set_description(desc, refresh=False)
        delta = int(step) - self._bar.n
        if delta >= 0 and total_steps is None and desc is None:
            self._bar.update(delta)  # keeps tqdm's rate estimate (ETA) and refresh throttling
        else:
            self._bar.n = int(step)
            self._bar.refresh()

    def close(self) -> None:
        """Flushes and closes the file, the TensorBoard writer and the bar (idempotent)."""
        if self._writer is not None:
            self._writer.close()
        if self._bar is not None:
            self._bar.close()
        self._file = self._writer = self._bar = None

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def read_metrics(path: PathLike) -> list[dict]:
    """The rows of a ``metrics.jsonl`` (``path`` is the file or its run directory); [] if it is missing."""
    path = Path(path)
    if path.is_dir():
        path = path / METRICS_FILE
    if not path.exists():
        return []
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def truncate_metrics(path: PathLike, after_step: int, stage: Optional[str] = None) -> int:
    """Drops the rows with ``step > after_step`` (only of ``stage`` when given); returns how many.

    For resuming from a checkpoint of ``after_step``: the rows logged after it would be logged again.
    The file is rewritten atomically (temporary file + rename). A partial last line (a crash mid-write)
    is dropped too.
    """
    path = Path(path)
    if path.is_dir():
        path = path / METRICS_FILE
    if not path.exists():
        return 0
    kept, dropped = [], 0
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                dropped += 1
                continue
            if row.get("step", 0) > after_step and (stage is None or row.get("stage", "") == stage):
                dropped += 1
            else:
                kept.append(line if line.endswith("\n") else line + "\n")
    if dropped:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(kept), encoding="utf-8")
        os.replace(tmp, path)
    return dropped
