"""Evaluation files: field maps from the command line, scored answers grouped by question with an optional
reference column, counts and content hashes."""

import json

import pytest

from grlhf.eval.loading import field_maps, load_benchmark, load_scored_groups


def test_field_maps_per_set_and_for_all():
    assert field_maps(["vlrb.chosen=better", "*.image=img", "vlrb.rejected=worse"]) == {
        "vlrb": {"chosen": "better", "rejected": "worse"}, "*": {"image": "img"}}
    with pytest.raises(ValueError, match="SET.KEY=COLUMN"):
        field_maps(["chosen=better"])


def test_scored_answers_are_grouped_and_the_reference_column_is_read(eval_files, tmp_path):
    rows = [json.loads(line) for line in eval_files["scores"].read_text().splitlines()]
    for image in eval_files["scores"].parent.glob("*.png"):  # a copy of the set beside the new file
        (tmp_path / image.name).write_bytes(image.read_bytes())
    with_ref = tmp_path / "with_reference.jsonl"
    with_ref.write_text("".join(json.dumps({**r, "ref": f"ref of {r['image']}", "instruction": r["question"]}) + "\n"
                                for r in rows))
    data = load_scored_groups(str(with_ref), {"question": "instruction"}, reference="ref")
    assert [len(g.answers) for g in data.records] == [3, 3]
    assert [g.reference for g in data.records] == ["ref of 0.png", "ref of 1.png"]
    assert data.info["questions"] == 2 and data.info["rows_used"] == 6 and data.info["hash"].startswith("sha256:")
    plain = load_scored_groups(str(eval_files["scores"]))
    assert all(g.reference is None for g in plain.records) and plain.info["hash"] != data.info["hash"]


def test_benchmark_rows_carry_reference_and_category(eval_files):
    data = load_benchmark(str(eval_files["prompts"]), {"ground_truth": "reference", "category": "category"})
    assert data.info["with_reference"] == 3 and all(p.category in ("colour", "shape") for p in data.records)
    bare = load_benchmark(str(eval_files["prompts"]))
    assert all(p.ground_truth is None and p.category is None for p in bare.records)
