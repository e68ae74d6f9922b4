"""Small evaluation files from the synthetic world (JSONL with PNG paths): preference pairs, scored answers
grouped by question, and benchmark prompts with a reference and a category."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from grlhf.data.synthetic import SyntheticConfig
from grlhf.eval.synthetic import synthetic_benchmark, synthetic_pairs, synthetic_scored_groups

SCFG = SyntheticConfig(seed=3, max_shapes=1, question_kinds=("colour", "shape"))


def _write(folder: Path, rows: list[dict]) -> Path:
    path = folder / "data.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture(scope="session")
def eval_files(tmp_path_factory) -> dict[str, Path]:
    """``pairs`` (align_anything), ``pairs_jsonl`` (other column names), ``scores`` and ``prompts``."""
    root = tmp_path_factory.mktemp("eval_files")
    files = {}
    for kind in ("pairs", "pairs_jsonl", "scores", "prompts"):
        (root / kind).mkdir()
    pairs = []
    for i, p in enumerate(synthetic_pairs(SCFG, 0, 3).records):
        p.image.load().save(root / "pairs" / f"{i}.png")
        first_better = i % 2 == 0
        pairs.append({"question": p.question, "image": f"{i}.png", "overall_response": 1 if first_better else 2,
                      "response_1": p.chosen if first_better else p.rejected,
                      "response_2": p.rejected if first_better else p.chosen})
    files["pairs"] = _write(root / "pairs", pairs)
    for i, _ in enumerate(pairs):
        (root / "pairs_jsonl" / f"{i}.png").write_bytes((root / "pairs" / f"{i}.png").read_bytes())
    files["pairs_jsonl"] = _write(root / "pairs_jsonl", [
        {"prompt": r["question"], "img": r["image"], "better": r[f"response_{r['overall_response']}"],
         "worse": r[f"response_{3 - r['overall_response']}"]} for r in pairs])
    scored = []
    for g, group in enumerate(synthetic_scored_groups(SCFG, 10, 2, answers=3).records):
        group.image.save(root / "scores" / f"{g}.png")
        scored += [{"question": group.question, "image": f"{g}.png", "answer": a, "score": s}
                   for a, s in zip(group.answers, group.scores)]
    files["scores"] = _write(root / "scores", scored)
    prompts = []
    for i, p in enumerate(synthetic_benchmark(SCFG, 20, 3).records):
        p.image.load().save(root / "prompts" / f"{i}.png")
        prompts.append({"question": p.question, "image": f"{i}.png", "reference": p.ground_truth,
                        "category": p.category})
    files["prompts"] = _write(root / "prompts", prompts)
    return files
