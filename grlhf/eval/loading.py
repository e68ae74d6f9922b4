"""Evaluation data from files: preference sets (``name=path[:format]`` with per-set field maps), scored
answers grouped by question, and benchmark prompts; each with its content hash and row counts."""

from __future__ import annotations

from typing import Optional, Sequence

from grlhf.config import ConfigError
from grlhf.data.loaders import LoadReport, load_preference_pairs, load_prompts, load_scored_answers
from grlhf.eval.commands import Dataset
from grlhf.eval.output import dataset_hash
from grlhf.eval.pointwise import group_answers


def field_maps(specs: Sequence[str]) -> dict[str, dict[str, str]]:
    """``["set.key=column", ...]`` -> ``{set: {key: column}}`` (``*.key=column`` applies to every set)."""
    out: dict[str, dict[str, str]] = {}
    for spec in specs:
        target, sep, column = spec.partition("=")
        name, dot, key = target.rpartition(".")
        if not sep or not dot or not name or not key or not column:
            raise ConfigError(f"a field map is SET.KEY=COLUMN (e.g. vlrb.chosen=better), got {spec!r}")
        out.setdefault(name, {})[key] = column
    return out


def _info(path: str, format: str, report: LoadReport) -> dict:
    return {"path": path, "format": format, "hash": dataset_hash(path), "rows_read": report.rows_read,
            "rows_used": report.rows_used, "dropped": dict(report.reason_counts)}


def load_pair_set(path: str, format: str, fields: Optional[dict[str, str]] = None, *,
                  preference_field: str = "more_helpful_response_id", label_values: Sequence[int] = (1, 2),
                  limit: Optional[int] = None) -> Dataset:
    """One preference set; bad rows are skipped and counted (``dropped`` in results.json)."""
    pairs, report = load_preference_pairs(path, format, fields or None, preference_field=preference_field,
                                          label_values=label_values, limit=limit)
    return Dataset(pairs, {**_info(path, format, report), "preference_field": preference_field
                           if format == "beavertails_v" else None, "fields": fields or {}})


def load_scored_groups(path: str, fields: Optional[dict[str, str]] = None, *, reference: Optional[str] = None,
                       score_range: tuple[float, float] = (1.0, 5.0), limit: Optional[int] = None) -> Dataset:
    """Scored answers grouped by question; ``reference`` names a column of reference answers (the
    ablation's anchor), read as the rows' ``id`` -> text through a second pass of the loader."""
    rows, report = load_scored_answers(path, fields or None, score_range=score_range, limit=limit)
    references = None
    if reference is not None:
        ref_fields = {"question": (fields or {}).get("question", "question"),
                      "image": (fields or {}).get("image", "image"), "ground_truth": reference,
                      "id": (fields or {}).get("id")}
        prompts, _ = load_prompts(path, {k: v for k, v in ref_fields.items() if v is not None}, image_check="none",
                                  limit=limit)
        references = {p.id: p.ground_truth for p in prompts if p.ground_truth is not None}
    groups = group_answers(rows, references)
    return Dataset(groups, {**_info(path, "scored", report), "questions": len(groups), "fields": fields or {}})


def load_benchmark(path: str, fields: Optional[dict[str, str]] = None, *, limit: Optional[int] = None) -> Dataset:
    """Benchmark prompts: ``question``, ``image``, optional reference (``ground_truth`` key) and ``category``."""
    prompts, report = load_prompts(path, fields or None, limit=limit)
    return Dataset(prompts, {**_info(path, "prompts", report), "fields": fields or {},
                             "with_reference": sum(p.ground_truth is not None for p in prompts)})


__all__ = ["field_maps", "load_benchmark", "load_pair_set", "load_scored_groups"]
