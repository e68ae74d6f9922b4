"""Evaluation principles of a preference dataset: one text for the whole dataset (a config string or a
file) and, optionally, a principle field per row; the judge prompt shows both (``reward.principles``,
the paper's Table-3 ablation) and GRM+SFT writes them as its targets' criteria."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional, Sequence

from grlhf.data.loaders import PreferencePair


def read_principles(text: Optional[str] = None, file: Optional[str] = None) -> Optional[str]:
    """The dataset-level principles: ``text``, or the contents of ``file``; None when neither is set.
    Both set, a missing file or an empty text is an error naming it."""
    if text is not None and file is not None:
        raise ValueError("give the dataset's principles as text or as a file, not both")
    if file is not None:
        path = Path(file)
        if not path.is_file():
            raise FileNotFoundError(f"principles file {path} does not exist")
        text = path.read_text(encoding="utf-8")
    if text is not None and not text.strip():
        raise ValueError(f"the dataset's principles{f' ({file})' if file else ''} are empty")
    return None if text is None else text.strip()


def combine_principles(dataset: Optional[str], row: Optional[str]) -> Optional[str]:
    """The dataset's principles, then the row's (a blank line between); None when both are absent."""
    parts = [p.strip() for p in (dataset, row) if p is not None and p.strip()]
    return "\n\n".join(parts) or None


def with_principles(pairs: Sequence[PreferencePair], dataset: Optional[str]) -> list[PreferencePair]:
    """``pairs`` with the dataset's principles put before each row's own (unchanged when ``dataset`` is None)."""
    if dataset is None:
        return list(pairs)
    return [dataclasses.replace(p, principles=combine_principles(dataset, p.principles)) for p in pairs]


__all__ = ["combine_principles", "read_principles", "with_principles"]
