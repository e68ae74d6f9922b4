"""The evaluations' length rule: an over-long item is skipped and counted by reason in results.json and the
table, the others are judged, and a set left with nothing to judge is a result, not a crash."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import dataclasses

from grlhf.data.lengths import LengthLimit
from grlhf.data.synthetic import SyntheticConfig
from grlhf.eval.__main__ import main
from grlhf.eval.engines import EngineSpec
from grlhf.eval.lengths import engine_limit, groups_for_grm, groups_for_rm, model_processor, pairs_for_rm, \
    skipped_notes
from grlhf.eval.synthetic import synthetic_pairs, synthetic_scored_groups
from grlhf.reward.judge import GroupJudge
from grlhf.reward.prompt import judge_template

FAST = ["--max-tokens", "6", "--bootstrap", "20", "--template", "compact", "--length-buckets", "256"]
LONG = " Explain every detail of the picture." * 200  # ~1,400 tokens: over any limit the tests set


def with_long_row(source: Path, folder: Path, question_key: str) -> Path:
    """A copy of a JSONL set (and its images) with one more row: the last row with an over-long question."""
    shutil.copytree(source.parent, folder)
    path = folder / source.name
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    rows.append({**rows[-1], question_key: rows[-1][question_key] + LONG})
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_the_limit_follows_the_engine():
    assert engine_limit(EngineSpec(length_buckets=(128, 512)), 64) == LengthLimit(512, 512, 64)
    assert engine_limit(EngineSpec(length_buckets=(128, 512)), 64, 300) == LengthLimit(300, 512, 64)
    assert engine_limit(EngineSpec(backend="vllm", max_model_len=2048), 0) == LengthLimit(2048, 2048, 0)


def test_notes_name_the_skips_and_the_unmeasured():
    notes = "\n".join(skipped_notes({"a": {"skipped_too_long": {"warm": {"prompt_too_long": 2}, "rl": {}}},
                                     "b": {"skipped_too_long": {"remote": None}}}))
    assert "- a, warm: 2 skipped as too long (prompt_too_long 2)" in notes and "- a, rl" not in notes
    assert "- b, remote: lengths not measured" in notes
    assert skipped_notes({"a": {"skipped_too_long": {"warm": {}}}}) == []


def test_a_question_or_pair_counts_once_by_its_first_failing_prompt():
    world = SyntheticConfig(seed=3, max_shapes=1)
    processor, limit = model_processor("tiny", EngineSpec()), LengthLimit(400, 400, 8)
    groups = synthetic_scored_groups(world, 0, 3, answers=3).records
    groups[1] = dataclasses.replace(groups[1], answers=[*groups[1].answers[:2], "long" + LONG])
    groups[2] = dataclasses.replace(groups[2], reference="long" + LONG)  # the anchor is judged too
    judge = GroupJudge(None, template=judge_template("compact"))
    kept, counts = groups_for_grm(groups, processor, limit, judge)
    assert kept == groups[:1] and counts == {"prompt_too_long": 2}
    kept, counts = groups_for_rm(groups, processor, limit)  # the RM never reads the reference
    assert kept == [groups[0], groups[2]] and counts == {"sequence_too_long": 1}
    pairs = synthetic_pairs(world, 0, 2).records
    pairs[0] = dataclasses.replace(pairs[0], rejected="long" + LONG)
    kept, counts = pairs_for_rm(pairs, processor, LengthLimit(400, 400, 0))
    assert kept == pairs[1:] and counts == {"sequence_too_long": 1}
    assert groups_for_rm(groups, None, limit) == (groups, None)  # a remote engine: not measured


def test_judge_skips_and_counts_an_over_long_pair(eval_files, tmp_path):
    pairs = with_long_row(eval_files["pairs"], tmp_path / "pairs", "question")
    out = tmp_path / "judge"
    assert main(["judge", "--judges", "warm=tiny", "--sets", f"aa={pairs}:align_anything", "--out", str(out),
                 *FAST]) == 0
    results = json.loads((out / "results.json").read_text())
    info = results["datasets"]["aa"]
    assert info["rows_used"] == 4 and info["skipped_too_long"] == {"warm": {"prompt_too_long": 1}}
    assert results["results"]["warm"]["aa"]["pairs"] == 3  # the others are judged
    assert "- aa, warm: 1 skipped as too long (prompt_too_long 1)" in (out / "table.md").read_text()


def test_policy_skips_an_over_long_prompt_and_survives_a_benchmark_with_nothing_to_judge(eval_files, tmp_path):
    prompts = with_long_row(eval_files["prompts"], tmp_path / "prompts", "question")
    args = ["policy", "--policies", "warm=tiny", "--benchmarks", f"toy={prompts}", "--fields",
            "toy.ground_truth=reference", "--judge", "tiny", "--answer-max-tokens", "4", *FAST]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    results = json.loads((tmp_path / "a" / "results.json").read_text())
    assert results["datasets"]["toy"]["skipped_too_long"] == {"policies": {"prompt_too_long": 1},
                                                              "judge of warm": {}}
    assert results["results"]["toy"]["warm"]["prompts"] == 3
    # the policy's prompts (~65 tokens) fit 100, its judge prompts (~160) do not: nothing is judged
    assert main([*args, "--max-prompt-length", "100", "--out", str(tmp_path / "b")]) == 0
    results = json.loads((tmp_path / "b" / "results.json").read_text())
    assert results["datasets"]["toy"]["skipped_too_long"] == {"policies": {"prompt_too_long": 1},
                                                              "judge of warm": {"prompt_too_long": 3}}
    assert results["results"]["toy"]["warm"]["prompts"] == 0 and results["results"]["toy"]["warm"]["win_rate"] is None
    assert "- toy, judge of warm: 3 skipped as too long" in (tmp_path / "b" / "table.md").read_text()
