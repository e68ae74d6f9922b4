"""Peak resident memory of the process during a block, shared by the benchmarks in bench/."""

from __future__ import annotations

import os
import threading
import time


class PeakRSS:
    """Peak resident set size above the value at entry, sampled from /proc/self/statm every ~1 ms."""

    page = os.sysconf("SC_PAGE_SIZE")

    @classmethod
    def rss(cls) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * cls.page

    def __enter__(self):
        self.base = self.peak = self.rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss())
            time.sleep(0.001)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.rss())
        self.extra = self.peak - self.base

    @property
    def delta_mib(self) -> float:
        return self.extra / 2**20
