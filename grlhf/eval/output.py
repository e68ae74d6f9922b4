"""What every evaluation writes: ``results.json`` (strict JSON), Markdown tables, bar charts, and the
content hash of each dataset it read."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from grlhf.data.loaders import list_files

RESULTS_FILE = "results.json"


def dataset_hash(path: str) -> str:
    """``sha256:<hex>`` of the data files of ``path`` (a file, or every parquet / JSONL file under a folder, in
    sorted order, each with its relative name), so a result names exactly the bytes it came from."""
    root = Path(path)
    digest = hashlib.sha256()
    for file in list_files(root):
        digest.update(str(file.relative_to(root) if root.is_dir() else file.name).encode())
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return f"sha256:{digest.hexdigest()}"


def strict(value: Any) -> Any:
    """``value`` with NaN / inf as None and numpy scalars and arrays as Python values (strict JSON)."""
    if isinstance(value, dict):
        return {str(k): strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict(v) for v in value]
    if isinstance(value, np.ndarray):
        return strict(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def write_results(out_dir: Path, results: dict[str, Any], table: str) -> Path:
    """``<out_dir>/results.json`` (strict JSON: ``allow_nan=False``) and ``<out_dir>/table.md``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / RESULTS_FILE
    path.write_text(json.dumps(strict(results), indent=2, allow_nan=False) + "\n")
    (out_dir / "table.md").write_text(table + "\n")
    return path


def fmt(value: Optional[float], interval: Optional[Sequence[float]] = None, digits: int = 3) -> str:
    """``0.812 [0.770, 0.850]``; ``n/a`` for a missing or NaN value."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    text = f"{value:.{digits}f}"
    if interval is not None and all(v is not None and math.isfinite(v) for v in interval):
        text += f" [{interval[0]:.{digits}f}, {interval[1]:.{digits}f}]"
    return text


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def grouped_bars(path: Path, title: str, groups: Sequence[str], series: dict[str, Sequence[float]],
                 errors: Optional[dict[str, Sequence[tuple[float, float]]]] = None, ylabel: str = "") -> bool:
    """A grouped bar chart (one group per x label, one bar per series, optional interval whiskers): the paper's
    Figure 5 shape. False when there is nothing to draw."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not groups or not series:
        return False
    width = 0.8 / len(series)
    figure, axis = plt.subplots(figsize=(max(6, 1.5 * len(groups)), 3.5))
    x = np.arange(len(groups))
    for index, (name, values) in enumerate(series.items()):
        heights = np.nan_to_num(np.asarray(values, np.float64))
        yerr = None
        if errors and name in errors:
            low = [h - (lo if lo is not None and math.isfinite(lo) else h) for h, (lo, _) in zip(heights, errors[name])]
            high = [(hi if hi is not None and math.isfinite(hi) else h) - h for h, (_, hi) in zip(heights, errors[name])]
            # as lists: matplotlib warns (numpy >= 1.25) on a [2, 1] array, the shape of one group
            yerr = np.clip(np.array([low, high]), 0, None).tolist()
        axis.bar(x + (index - (len(series) - 1) / 2) * width, heights, width, label=name, yerr=yerr, capsize=2)
    axis.set_xticks(x, groups)
    axis.set_title(title)
    axis.set_ylabel(ylabel)
    axis.grid(alpha=0.3, axis="y")
    axis.legend()
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return True


__all__ = ["RESULTS_FILE", "dataset_hash", "fmt", "grouped_bars", "markdown_table", "strict", "write_results"]
