"""Preference pairs, RL prompts and point-wise scored answers from parquet or JSONL files.

Files: ``*.parquet`` (read with pyarrow in row batches, only the needed columns; images as the HF
datasets ``Image`` struct ``{"bytes", "path"}`` or a plain binary column), ``*.jsonl`` (one JSON object a
line; images as paths relative to the file's folder, or absolute), or a directory holding such files
(searched recursively, read in sorted order).

Images are *lazy*: a record holds an :class:`ImageSource` (the encoded bytes, or a path for JSONL
images), and ``record.image.load()`` decodes a fresh PIL image each time. Every image is still fully
decoded once while loading (``image_check="decode"``) so that a corrupt image is a bad row at load time,
not a crash mid-run; the pixels are then dropped, so memory holds compressed images only.

Bad rows (missing / undecodable / not found image, missing field, empty text, a label outside the allowed
pair, a bad score, a bad JSON line) are counted in a :class:`LoadReport` with their file, row number
(0-based row index within the file; for JSONL the line number minus one) and reason, and skipped
(``on_bad_row="skip"``) or raise a ``ValueError`` naming file, row and reason (``on_bad_row="raise"``).
A configured column absent from a parquet file's schema, or a load that keeps no row at all, is always an
error.

Label convention (preference pairs): the label names the *better* response. Align-Anything's
``overall_response`` and BeaverTails-V's ``safer_response_id`` / ``more_helpful_response_id`` take
values in {1, 2} (PKU-Alignment's align-anything formatters read them so). ``label_values=(a, b)``
changes the pair: ``a`` means response_1 is better, ``b`` response_2 (e.g. ``(0, 1)`` for 0-based data).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional, Sequence, Union

from grlhf.data.conversations import prompt_conversation
from grlhf.data.images import ImageSource, check_image_check
from grlhf.errors import UserError
from grlhf.data.synthetic import world

log = logging.getLogger("grlhf.data")

BAD_ROW_POLICIES = ("skip", "raise")
PAIR_FORMATS = ("align_anything", "beavertails_v", "jsonl_pairs")
BEAVERTAILS_PREFERENCE_FIELDS = ("safer_response_id", "more_helpful_response_id")
FILE_TYPES = ("auto", "parquet", "jsonl")


def _as_image_source(self) -> None:
    object.__setattr__(self, "image", ImageSource.of(self.image))


# ---------------------------------------------------------------------------------------------- records


@dataclass(frozen=True)
class PreferencePair:
    """One preference pair, normalised to chosen / rejected. ``image.load()`` gives the PIL image."""

    id: str
    image: ImageSource
    question: str
    chosen: str
    rejected: str
    principles: Optional[str] = None  # evaluation principles (the dataset's, then the row's), or None
    source_row: int = -1  # 0-based row index over all files read (dropped rows counted)
    scores: Optional[tuple[float, float]] = None  # the dataset's (chosen, rejected) scores, when it has them

    __post_init__ = _as_image_source


@dataclass(frozen=True)
class Prompt:
    """An RL prompt: image + question, with an optional ground truth; ``scene`` when the synthetic world
    can check answers (``true_quality``)."""

    id: str
    image: ImageSource
    question: str
    ground_truth: Optional[str] = None
    source_row: int = -1
    scene: Any = None
    category: Optional[str] = None  # a benchmark's category (per-category evaluation tables)

    __post_init__ = _as_image_source

    @property
    def conversation(self) -> list[dict]:
        """The policy's request: the image, then the question."""
        return prompt_conversation(self.question, self.image)

    def true_quality(self, answer: str) -> Optional[float]:
        """The synthetic world's quality of ``answer`` (1 right, 0 wrong, between: partly); None off the task."""
        return None if self.scene is None else world.quality(self.scene, self.question, answer)

    def log_fields(self, answer: str) -> dict[str, Any]:
        """What a sample row of ``samples.jsonl`` shows of this prompt and an answer to it."""
        return {"question": self.question, "true_quality": self.true_quality(answer)}


@dataclass(frozen=True)
class ScoredAnswer:
    """A point-wise scored answer (the MLLM-as-a-Judge score task's shape)."""

    id: str
    image: ImageSource
    question: str
    answer: str
    score: float
    source_row: int = -1

    __post_init__ = _as_image_source


# --------------------------------------------------------------------------------------------- field maps


class _Fields:
    """Column names of one record kind: the required ones, then the optional ones that are set."""

    def required(self) -> list[str]:
        raise NotImplementedError

    def optional(self) -> tuple[Optional[str], ...]:
        return ()

    def columns(self) -> list[str]:
        return self.required() + [c for c in self.optional() if c is not None]


@dataclass(frozen=True)
class PairFields(_Fields):
    """Column names of a preference-pair file. ``label`` names the better response (label style);
    ``chosen`` / ``rejected`` are used instead when ``label`` is None (the generic JSONL style).
    Optional: ``principles`` (a row's evaluation principles), ``score_1`` / ``score_2`` (the dataset's
    scores of response_1 / response_2, or of chosen / rejected in the JSONL style), ``id``."""

    question: str = "question"
    image: str = "image"
    response_1: Optional[str] = "response_1"
    response_2: Optional[str] = "response_2"
    label: Optional[str] = "overall_response"
    chosen: Optional[str] = None
    rejected: Optional[str] = None
    principles: Optional[str] = None
    score_1: Optional[str] = None
    score_2: Optional[str] = None
    id: Optional[str] = None

    def required(self) -> list[str]:
        if self.label is not None:
            return [self.question, self.image, self.response_1, self.response_2, self.label]
        return [self.question, self.image, self.chosen, self.rejected]

    def optional(self) -> tuple[Optional[str], ...]:
        return (self.principles, self.score_1, self.score_2, self.id)


@dataclass(frozen=True)
class PromptFields(_Fields):
    question: str = "question"
    image: str = "image"
    ground_truth: Optional[str] = None  # optional: absent or null in a row gives None
    id: Optional[str] = None
    category: Optional[str] = None  # optional, as ground_truth

    def required(self) -> list[str]:
        return [self.question, self.image]

    def optional(self) -> tuple[Optional[str], ...]:
        return (self.ground_truth, self.id, self.category)


@dataclass(frozen=True)
class ScoredFields(_Fields):
    question: str = "question"
    image: str = "image"
    answer: str = "answer"
    score: str = "score"
    id: Optional[str] = None

    def required(self) -> list[str]:
        return [self.question, self.image, self.answer, self.score]

    def optional(self) -> tuple[Optional[str], ...]:
        return (self.id,)


def pair_fields(format: str, preference_field: str = "more_helpful_response_id") -> PairFields:
    """The default column names of a preference-pair format."""
    if format == "align_anything":
        return PairFields(label="overall_response")
    if format == "beavertails_v":
        if preference_field not in BEAVERTAILS_PREFERENCE_FIELDS:
            raise ValueError(f"preference_field must be one of {BEAVERTAILS_PREFERENCE_FIELDS}, "
                             f"got {preference_field!r}")
        return PairFields(label=preference_field)
    if format == "jsonl_pairs":
        return PairFields(response_1=None, response_2=None, label=None, chosen="chosen", rejected="rejected")
    raise ValueError(f"unknown preference-pair format {format!r}; expected one of {PAIR_FORMATS}")


def _fields(default, overrides):
    if overrides is None:
        return default
    if isinstance(overrides, type(default)):
        return overrides
    overrides = dict(overrides)
    known = {f.name for f in dataclasses.fields(default)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"unknown field name key(s) {unknown}; expected some of {sorted(known)}")
    return dataclasses.replace(default, **overrides)


# ------------------------------------------------------------------------------------------------ report


@dataclass(frozen=True)
class BadRow:
    file: str
    row: int
    reason: str  # a short code: missing_image, bad_image, image_not_found, missing_field, ...
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.file} row {self.row}: {self.reason}" + (f" ({self.detail})" if self.detail else "")


@dataclass
class LoadReport:
    """What a load read, kept and dropped; ``bad_rows`` keeps the first ``max_logged`` bad rows."""

    source: str
    rows_read: int = 0
    rows_used: int = 0
    reason_counts: Counter = field(default_factory=Counter)
    bad_rows: list = field(default_factory=list)
    max_logged: int = 100

    @property
    def rows_dropped(self) -> int:
        return self.rows_read - self.rows_used

    def add_bad(self, bad: BadRow) -> None:
        self.reason_counts[bad.reason] += 1
        if len(self.bad_rows) < self.max_logged:
            self.bad_rows.append(bad)

    def summary(self) -> str:
        line = f"{self.source}: {self.rows_read} rows read, {self.rows_used} used, {self.rows_dropped} dropped"
        if self.reason_counts:
            line += " (" + ", ".join(f"{k}: {v}" for k, v in sorted(self.reason_counts.items())) + ")"
        return line


class DataError(UserError, ValueError):
    """Data files that cannot be used: none found, unknown type, missing columns, a bad row under
    ``on_bad_row=raise``, or no usable row at all."""


class _Bad(Exception):
    def __init__(self, reason: str, detail: str = ""):
        super().__init__(reason, detail)
        self.reason, self.detail = reason, detail


# ------------------------------------------------------------------------------------------------ files


def list_files(path: Union[str, os.PathLike], file_type: str = "auto") -> list[Path]:
    """The data files of ``path``: itself, or the parquet / JSONL files under a directory (sorted)."""
    if file_type not in FILE_TYPES:
        raise ValueError(f"file_type must be one of {FILE_TYPES}, got {file_type!r}")
    p = Path(path)
    if p.is_dir():
        exts = (".parquet", ".jsonl") if file_type == "auto" else (f".{file_type}",)
        files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix in exts)
        if not files:
            raise DataError(f"no {'/'.join(exts)} files under {p}")
        return files
    if not p.exists():
        raise FileNotFoundError(f"data file {p} does not exist")
    return [p]


def _file_type(f: Path, file_type: str) -> str:
    if file_type != "auto":
        return file_type
    if f.suffix == ".parquet":
        return "parquet"
    if f.suffix in (".jsonl", ".json"):
        return "jsonl"
    raise DataError(f"cannot tell the type of {f} (expected .parquet or .jsonl; or pass file_type)")


def _iter_parquet(f: Path, columns: Sequence[str], batch_rows: int) -> Iterator[tuple[int, Any]]:
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(f)
    names = pf.schema_arrow.names
    missing = [c for c in dict.fromkeys(columns) if c not in names]
    if missing:
        raise DataError(f"{f}: column(s) {missing} not found; the file has {names}")
    row = 0
    for batch in pf.iter_batches(batch_size=batch_rows, columns=list(dict.fromkeys(columns))):
        for rec in batch.to_pylist():
            yield row, rec
            row += 1


def _iter_jsonl(f: Path) -> Iterator[tuple[int, Any]]:
    with open(f, encoding="utf-8") as fh:
        for row, line in enumerate(fh):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                yield row, _Bad("bad_json", str(e))
                continue
            yield row, rec if isinstance(rec, dict) else _Bad("bad_json", f"a {type(rec).__name__}, not an object")


# ------------------------------------------------------------------------------------------ row parsing


def _value(rec: Mapping, name: str, *, required: bool = True) -> Any:
    v = rec.get(name)
    if v is None or (isinstance(v, float) and math.isnan(v)):
        if required:
            raise _Bad("missing_field", name)
        return None
    return v


def _text(rec: Mapping, name: str) -> str:
    v = _value(rec, name)
    if not isinstance(v, str):
        raise _Bad("bad_field", f"{name} is a {type(v).__name__}, not text")
    if not v.strip():
        raise _Bad("empty_text", name)
    return v


def _optional_text(rec: Mapping, name: Optional[str]) -> Optional[str]:
    if name is None:
        return None
    v = _value(rec, name, required=False)
    return None if v is None else str(v)


def _image(rec: Mapping, name: str, base_dir: Path, check: str) -> ImageSource:
    v = rec.get(name)
    if isinstance(v, dict):  # the HF datasets Image feature: {"bytes": ..., "path": ...}
        v = v.get("bytes") or v.get("path")
    if v is None or (isinstance(v, (str, bytes)) and not v):
        raise _Bad("missing_image", name)
    if isinstance(v, (bytes, bytearray, memoryview)):
        src = ImageSource(data=bytes(v))
    elif isinstance(v, str):
        p = Path(v) if os.path.isabs(v) else base_dir / v
        if not p.is_file():
            raise _Bad("image_not_found", str(p))
        src = ImageSource(path=str(p))
    else:
        raise _Bad("bad_image", f"{name} is a {type(v).__name__}")
    try:
        src.check(check)
    except Exception as e:  # PIL raises many types (OSError, SyntaxError, DecompressionBombError, ...)
        raise _Bad("bad_image", f"{type(e).__name__}: {e}") from None
    return src


def _number(rec: Mapping, name: str, reason: str = "bad_score") -> float:
    """A finite number (not a bool) from column ``name``; else a bad row with ``reason``."""
    raw = _value(rec, name)
    try:
        if isinstance(raw, bool):
            raise ValueError
        number = float(raw)
    except (TypeError, ValueError):
        raise _Bad(reason, f"{name}={raw!r}") from None
    if not math.isfinite(number):
        raise _Bad(reason, f"{name}={raw!r}")
    return number


def _label(rec: Mapping, name: str, label_values: tuple) -> int:
    """0 if response_1 is the better one, 1 if response_2."""
    v = _value(rec, name)
    iv = None
    if isinstance(v, int) and not isinstance(v, bool):
        iv = v
    elif isinstance(v, float) and v.is_integer():
        iv = int(v)
    elif isinstance(v, str) and v.strip().lstrip("-").isdigit():
        iv = int(v.strip())
    if iv is None or iv not in label_values:
        raise _Bad("bad_label", f"{name}={v!r} not in {set(label_values)}")
    return label_values.index(iv)


def _load(path, file_type, columns, make, on_bad_row, batch_rows, max_logged, limit, kind):
    if on_bad_row not in BAD_ROW_POLICIES:
        raise ValueError(f"on_bad_row must be one of {BAD_ROW_POLICIES}, got {on_bad_row!r}")
    files = list_files(path, file_type)
    report = LoadReport(source=str(path), max_logged=max_logged)
    out = []
    for f in files:
        if limit is not None and report.rows_read >= limit:
            break
        ft = _file_type(f, file_type)
        rows = _iter_parquet(f, columns, batch_rows) if ft == "parquet" else _iter_jsonl(f)
        for row, rec in rows:
            if limit is not None and report.rows_read >= limit:
                break
            global_row = report.rows_read
            report.rows_read += 1
            try:
                if isinstance(rec, _Bad):
                    raise rec
                out.append(make(rec, f, row, global_row))
                report.rows_used += 1
            except _Bad as e:
                bad = BadRow(str(f), row, e.reason, e.detail)
                if on_bad_row == "raise":
                    raise DataError(f"bad {kind} row: {bad}") from None
                report.add_bad(bad)
    level = logging.WARNING if report.rows_dropped else logging.INFO
    log.log(level, "%s: %s", kind, report.summary())
    for bad in report.bad_rows[:10]:
        log.warning("  dropped %s", bad)
    if report.rows_read and not report.rows_used:
        raise DataError(f"no usable {kind} rows: {report.summary()}; first: {report.bad_rows[0]}")
    return out, report


def _record_id(rec, id_field, f: Path, row: int) -> str:
    v = _value(rec, id_field, required=False) if id_field else None
    return str(v) if v is not None else f"{f.stem}:{row}"


# -------------------------------------------------------------------------------------------- loaders


def load_preference_pairs(
    path: Union[str, os.PathLike],
    format: str = "align_anything",
    fields: Union[PairFields, Mapping[str, str], None] = None,
    *,
    preference_field: str = "more_helpful_response_id",
    label_values: Sequence[int] = (1, 2),
    on_bad_row: str = "skip",
    image_check: str = "decode",
    file_type: str = "auto",
    limit: Optional[int] = None,
    batch_rows: int = 256,
    max_logged: int = 100,
) -> tuple[list[PreferencePair], LoadReport]:
    """Read preference pairs, normalised to chosen / rejected.

    ``format`` picks the default columns (``align_anything``: label ``overall_response``;
    ``beavertails_v``: label ``preference_field``, ``safer_response_id`` or ``more_helpful_response_id``;
    ``jsonl_pairs``: ``chosen`` / ``rejected`` columns, no label); ``fields`` overrides any of them
    (a :class:`PairFields` or a dict). ``label_values=(a, b)``: ``a`` = response_1 better, ``b`` =
    response_2 better. The file type (parquet / JSONL) is independent of ``format``.
    """
    fm = _fields(pair_fields(format, preference_field), fields)
    label_values = tuple(int(v) for v in label_values)
    if len(label_values) != 2 or label_values[0] == label_values[1]:
        raise ValueError(f"label_values must be two distinct integers, got {label_values}")
    check_image_check(image_check)
    if fm.label is None and (fm.chosen is None or fm.rejected is None):
        raise ValueError("preference fields need a label column or both chosen and rejected columns")
    if (fm.score_1 is None) != (fm.score_2 is None):
        raise ValueError(f"score fields come in pairs: score_1={fm.score_1!r}, score_2={fm.score_2!r}")

    def make(rec, f, row, global_row):
        question = _text(rec, fm.question)
        better = 0
        if fm.label is not None:
            responses = (_text(rec, fm.response_1), _text(rec, fm.response_2))
            better = _label(rec, fm.label, label_values)
            chosen, rejected = responses[better], responses[1 - better]
        else:
            chosen, rejected = _text(rec, fm.chosen), _text(rec, fm.rejected)
        scores = None
        if fm.score_1 is not None:
            by_column = (_number(rec, fm.score_1), _number(rec, fm.score_2))
            scores = (by_column[better], by_column[1 - better])
            if scores[0] <= scores[1]:  # a verdict target from them would contradict the label
                raise _Bad("scores_contradict_label", f"chosen {scores[0]:g} <= rejected {scores[1]:g}")
        image = _image(rec, fm.image, f.parent, image_check)
        return PreferencePair(_record_id(rec, fm.id, f, row), image, question, chosen, rejected,
                              _optional_text(rec, fm.principles), global_row, scores)

    return _load(path, file_type, fm.columns(), make, on_bad_row, batch_rows, max_logged, limit,
                 "preference pair")


def load_prompts(
    path: Union[str, os.PathLike],
    fields: Union[PromptFields, Mapping[str, str], None] = None,
    *,
    on_bad_row: str = "skip",
    image_check: str = "decode",
    file_type: str = "auto",
    limit: Optional[int] = None,
    batch_rows: int = 256,
    max_logged: int = 100,
) -> tuple[list[Prompt], LoadReport]:
    """Read RL prompts (image + question, optional ground truth: null, or a key absent from a JSONL
    row, gives None; a configured column absent from a parquet file is an error)."""
    fm = _fields(PromptFields(), fields)
    check_image_check(image_check)

    def make(rec, f, row, global_row):
        question = _text(rec, fm.question)
        image = _image(rec, fm.image, f.parent, image_check)
        return Prompt(_record_id(rec, fm.id, f, row), image, question,
                      _optional_text(rec, fm.ground_truth), global_row, category=_optional_text(rec, fm.category))

    return _load(path, file_type, fm.columns(), make, on_bad_row, batch_rows, max_logged, limit, "prompt")


def load_scored_answers(
    path: Union[str, os.PathLike],
    fields: Union[ScoredFields, Mapping[str, str], None] = None,
    *,
    score_range: Optional[tuple[float, float]] = None,
    on_bad_row: str = "skip",
    image_check: str = "decode",
    file_type: str = "auto",
    limit: Optional[int] = None,
    batch_rows: int = 256,
    max_logged: int = 100,
) -> tuple[list[ScoredAnswer], LoadReport]:
    """Read point-wise scored answers; a score that is not a finite number (or is outside the closed
    ``score_range`` when given, e.g. ``(1, 5)`` for MLLM-as-a-Judge) is a bad row."""
    fm = _fields(ScoredFields(), fields)
    check_image_check(image_check)

    def make(rec, f, row, global_row):
        question, answer = _text(rec, fm.question), _text(rec, fm.answer)
        score = _number(rec, fm.score)
        if score_range and not score_range[0] <= score <= score_range[1]:
            raise _Bad("bad_score", f"{fm.score}={rec.get(fm.score)!r} not in {list(score_range)}")
        image = _image(rec, fm.image, f.parent, image_check)
        return ScoredAnswer(_record_id(rec, fm.id, f, row), image, question, answer, score, global_row)

    return _load(path, file_type, fm.columns(), make, on_bad_row, batch_rows, max_logged, limit,
                 "scored answer")


__all__ = [
    "BadRow", "DataError", "LoadReport", "PairFields", "PreferencePair", "Prompt", "PromptFields",
    "ScoredAnswer", "ScoredFields", "list_files", "load_preference_pairs", "load_prompts",
    "load_scored_answers", "pair_fields",
]
