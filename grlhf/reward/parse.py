r"""Read the GRM's verdict: the two scores in the last ``\boxed{...}`` of its output.

The grammar is strict on purpose: RL rewards whatever the parser accepts, so anything a judge should
not get credit for is unparseable (reward 0, counted as a parse failure)::

    verdict := ... BOX                   the last top-level \boxed{...} (one inside another box is not top-level)
    BOX     := "\boxed" WS "{" score "," score "}"
    score   := WS ( NUMBER | "{" score "}" | WRAPPER WS "{" score "}" ) WS
    WRAPPER := "\text" | "\mathrm" | "\mathbf" | "\textbf"
    NUMBER  := [+-]? ( D+ ( "." D* )? | "." D+ ) ( [eE] [+-]? D+ )?     D: the ASCII digits 0-9
    WS      := ASCII whitespace, any amount

So ``\boxed{\text{8}, {5}}`` is ``(8, 5)``, while any other LaTeX command (``\frac12``, ``\sqrt{4}``,
``\times 8``), a ``\boxed`` inside the box, a comma inside a wrapper (``\text{8, 5}``), a box that never
closes, a NaN or infinite value, and non-ASCII digits (Arabic-Indic, fullwidth, mathematical bold) are
unparseable.
"""

from __future__ import annotations

import math
import re
from typing import Optional

_BOXED = re.compile(r"\\boxed[ \t\n\r\f\v]*\{")
_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_WRAPPED = re.compile(r"(?:\\(?:text|mathrm|mathbf|textbf)[ \t\n\r\f\v]*)?\{(.*)\}", re.DOTALL)
_ASCII_WHITESPACE = " \t\n\r\f\v"


def _closing_brace(text: str, start: int) -> Optional[int]:
    """The index of the ``}`` that closes the group opened just before ``start``, or None."""
    depth = 1
    for position in range(start, len(text)):
        if text[position] == "{":
            depth += 1
        elif text[position] == "}":
            depth -= 1
            if depth == 0:
                return position
    return None


def _last_top_level_box(text: str) -> Optional[str]:
    """The content of the last ``\\boxed{...}`` not inside another one; None if none, or if it never closes."""
    content, position = None, 0
    while (match := _BOXED.search(text, position)) is not None:
        end = _closing_brace(text, match.end())
        if end is None:
            return None
        content, position = text[match.end():end], end + 1
    return content


def _split_top_level(content: str) -> list[str]:
    """``content`` split at the commas outside any braces."""
    parts, depth, start = [], 0, 0
    for position, char in enumerate(content):
        depth += {"{": 1, "}": -1}.get(char, 0)
        if char == "," and depth == 0:
            parts.append(content[start:position])
            start = position + 1
    return [*parts, content[start:]]


def _score(part: str) -> Optional[float]:
    """One ``score`` of the grammar, unwrapped; None if it is anything else or not finite."""
    while True:  # a loop, not recursion: deep nesting cannot overflow the stack
        part = part.strip(_ASCII_WHITESPACE)
        if _NUMBER.fullmatch(part):
            value = float(part)
            return value if math.isfinite(value) else None
        wrapped = _WRAPPED.fullmatch(part)
        if wrapped is None or _closing_brace(part, part.index("{") + 1) != len(part) - 1:
            return None  # not a wrapper, or "{6}{7}" (the first brace closes before the end)
        part = wrapped.group(1)


def parse_scores(text: str) -> Optional[tuple[float, float]]:
    """The two finite scores of the last top-level ``\\boxed{a, b}`` of ``text`` (the module's grammar), or
    None if it is malformed. Never raises."""
    if not isinstance(text, str):
        return None
    content = _last_top_level_box(text)
    if content is None or _BOXED.search(content):
        return None
    parts = _split_top_level(content)
    if len(parts) != 2:
        return None
    scores = [_score(part) for part in parts]
    if scores[0] is None or scores[1] is None:
        return None
    return scores[0], scores[1]
