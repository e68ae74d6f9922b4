"""Profiles of a few training steps: a ``jax.profiler`` trace and a host-side (cProfile) summary.

``logging.profile_steps=N`` traces steps ``[logging.profile_from, profile_from + N)`` of every phase into
``<run>/profile/<phase>/``: the XLA trace (TensorBoard's profile plugin or Perfetto read it;
``perfetto_trace.json.gz`` is plain JSON) and ``host.txt``, the Python functions those steps spent their
time in, sorted by cumulative time. Profiling slows the traced steps; their ``step_time`` says so.
"""

from __future__ import annotations

import cProfile
import io
import logging
import pstats
from pathlib import Path
from typing import Optional

import jax

log = logging.getLogger("grlhf.trainer")
HOST_REPORT = "host.txt"
HOST_LINES = 60  # functions listed in host.txt


class StepProfiler:
    """Starts both profilers before step ``first`` and stops them after step ``first + count - 1``."""

    def __init__(self, directory: Path, first: int, count: int, enabled: bool = True):
        self.directory, self.first, self.last = directory, first, first + count - 1
        self.enabled = enabled and count > 0
        self._host: Optional[cProfile.Profile] = None

    def before(self, step: int) -> None:
        if self.enabled and step == self.first:
            self.directory.mkdir(parents=True, exist_ok=True)
            jax.profiler.start_trace(str(self.directory), create_perfetto_trace=True)
            self._host = cProfile.Profile()
            self._host.enable()

    def after(self, step: int) -> None:
        if self._host is not None and step == self.last:
            self.stop()

    def stop(self) -> None:
        """Ends a profile in progress (also when the phase ends before its last traced step)."""
        if self._host is None:
            return
        self._host.disable()
        jax.profiler.stop_trace()
        text = io.StringIO()
        stats = pstats.Stats(self._host, stream=text)
        stats.sort_stats("cumulative").print_stats(HOST_LINES)
        (self.directory / HOST_REPORT).write_text(text.getvalue())
        self._host = None
        log.info("profile of steps %d-%d written to %s", self.first + 1, self.last + 1, self.directory)


__all__ = ["HOST_REPORT", "StepProfiler"]
