"""Read the GRM's verdict: the two scores in the last ``\\boxed{...}`` of its output."""

from __future__ import annotations

import math
import re
from typing import Optional

_BOXED = re.compile(r"\\boxed\s*\{")
_LATEX_COMMAND = re.compile(r"\\[A-Za-z]+")
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")


def _last_boxed_content(text: str) -> Optional[str]:
    """The content of the last ``\\boxed{`` with its braces balanced, or None if it never closes."""
    starts = [match.end() for match in _BOXED.finditer(text)]
    if not starts:
        return None
    start = starts[-1]
    depth = 1
    for position in range(start, len(text)):
        char = text[position]
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return text[start:position]
    return None


def parse_scores(text: str) -> Optional[tuple[float, float]]:
    """Two finite scores from the last ``\\boxed{a, b}`` of ``text``, or None if it is malformed.

    Tolerates whitespace, surrounding text and LaTeX wrappers (``\\boxed{\\text{8}, {5}}``). None
    when there is no closed box, the box does not hold exactly two numbers, or a number is NaN or
    infinite. Never raises.
    """
    if not isinstance(text, str):
        return None
    content = _last_boxed_content(text)
    if content is None:
        return None
    plain = _LATEX_COMMAND.sub(" ", content).replace("{", " ").replace("}", " ")
    parts = plain.split(",")
    if len(parts) != 2:
        return None
    scores = []
    for part in parts:
        part = part.strip()
        if not _NUMBER.fullmatch(part):
            return None
        value = float(part)
        if not math.isfinite(value):
            return None
        scores.append(value)
    return scores[0], scores[1]
