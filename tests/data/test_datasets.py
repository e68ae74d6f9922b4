"""Dataset loaders (parquet / JSONL, bad-row policy, field maps) and the resumable epoch iterator."""

import io
import itertools
import json
import logging

import numpy as np
import PIL.Image
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from grlhf.data.datasets import (
    EpochIterator,
    ImageSource,
    PairFields,
    PreferencePair,
    load_preference_pairs,
    load_prompts,
    load_scored_answers,
)

IMAGE_STRUCT = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def png(color=(255, 0, 0), size=(4, 3)) -> bytes:
    buf = io.BytesIO()
    PIL.Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


GOOD = png()
TRUNCATED = GOOD[: len(GOOD) // 2]


def write_parquet(path, rows, image_type=IMAGE_STRUCT, image_field="image"):
    cols = {k: [r.get(k) for r in rows] for k in dict.fromkeys(k for r in rows for k in r)}
    arrays = {k: pa.array(v, type=image_type) if k == image_field else pa.array(v) for k, v in cols.items()}
    pq.write_table(pa.table(arrays), path, row_group_size=2)  # several row groups / batches
    return path


def write_jsonl(path, rows, extra_lines=()):
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
        for line in extra_lines:
            f.write(line + "\n")
    return path


def aa_row(i, label=1, image="good", **kw):
    img = {"good": {"bytes": GOOD, "path": None}, "none": None, "corrupt": {"bytes": b"not an image", "path": None},
           "truncated": {"bytes": TRUNCATED, "path": None}}[image]
    row = {"question": f"q{i}", "image": img, "response_1": f"a{i}", "response_2": f"b{i}", "overall_response": label}
    row.update(kw)
    return row


# ------------------------------------------------------------------------------------------ Align-Anything


def align_anything_file(tmp_path):
    rows = [
        aa_row(0, 1),
        aa_row(1, 2),
        aa_row(2, image="none"),             # row 2: missing image
        aa_row(3, image="corrupt"),          # row 3: undecodable bytes
        aa_row(4, label=3),                  # row 4: label outside {1, 2}
        aa_row(5, response_2="   "),         # row 5: empty text
        aa_row(6, question=None),            # row 6: missing field (null)
        aa_row(7, image="truncated"),        # row 7: truncated PNG
        aa_row(8, label=None),               # row 8: missing label
        aa_row(9, 2),
    ]
    return write_parquet(tmp_path / "aa.parquet", rows)


EXPECTED_AA_BAD = [(2, "missing_image"), (3, "bad_image"), (4, "bad_label"), (5, "empty_text"),
                   (6, "missing_field"), (7, "bad_image"), (8, "missing_field")]


def test_align_anything_parquet_skip(tmp_path, caplog):
    path = align_anything_file(tmp_path)
    with caplog.at_level(logging.INFO, logger="grlhf.data"):
        pairs, report = load_preference_pairs(path, format="align_anything")
    assert [(p.question, p.chosen, p.rejected) for p in pairs] == [
        ("q0", "a0", "b0"), ("q1", "b1", "a1"), ("q9", "b9", "a9")]
    assert [p.source_row for p in pairs] == [0, 1, 9]
    assert pairs[0].id == "aa:0" and pairs[0].principles is None
    im = pairs[1].image.load()
    assert isinstance(im, PIL.Image.Image) and im.size == (4, 3) and im.getpixel((0, 0)) == (255, 0, 0)
    assert [(b.row, b.reason) for b in report.bad_rows] == EXPECTED_AA_BAD
    assert (report.rows_read, report.rows_used, report.rows_dropped) == (10, 3, 7)
    assert report.reason_counts == {"missing_image": 1, "bad_image": 2, "bad_label": 1, "empty_text": 1,
                                    "missing_field": 2}
    assert report.summary().endswith(
        "10 rows read, 3 used, 7 dropped (bad_image: 2, bad_label: 1, empty_text: 1, missing_field: 2, "
        "missing_image: 1)")
    assert "3 used, 7 dropped" in caplog.text and "row 4: bad_label" in caplog.text


@pytest.mark.parametrize("row,reason", EXPECTED_AA_BAD)
def test_align_anything_raise_names_file_row_reason(tmp_path, row, reason):
    rows = [aa_row(0)] * 10
    src = pq.read_table(align_anything_file(tmp_path)).to_pylist()
    rows = rows[:row] + [src[row]] + rows[row + 1:]
    path = write_parquet(tmp_path / "one_bad.parquet", rows)
    with pytest.raises(ValueError, match=rf"one_bad\.parquet row {row}: {reason}"):
        load_preference_pairs(path, on_bad_row="raise")
    pairs, report = load_preference_pairs(path)
    assert len(pairs) == 9 and [(b.row, b.reason) for b in report.bad_rows] == [(row, reason)]


def test_image_check_modes_and_plain_binary_column(tmp_path):
    rows = [aa_row(0), aa_row(1, image="truncated")]
    for r in rows:
        r["image"] = r["image"]["bytes"]
    path = write_parquet(tmp_path / "bin.parquet", rows, image_type=pa.binary())
    pairs, report = load_preference_pairs(path)  # full decode catches the truncated PNG
    assert len(pairs) == 1 and report.bad_rows[0].reason == "bad_image"
    pairs, report = load_preference_pairs(path, image_check="none")
    assert len(pairs) == 2 and report.rows_dropped == 0


def test_image_struct_with_path_only(tmp_path):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "x.png").write_bytes(GOOD)
    rows = [aa_row(0), aa_row(1), aa_row(2)]
    rows[1]["image"] = {"bytes": None, "path": "imgs/x.png"}
    rows[2]["image"] = {"bytes": None, "path": "imgs/missing.png"}
    pairs, report = load_preference_pairs(write_parquet(tmp_path / "p.parquet", rows))
    assert [p.source_row for p in pairs] == [0, 1]
    assert pairs[1].image.path == str(tmp_path / "imgs" / "x.png")
    assert pairs[1].image.load().size == (4, 3)
    assert [(b.row, b.reason) for b in report.bad_rows] == [(2, "image_not_found")]


def test_custom_field_names_and_label_values(tmp_path):
    rows = [{"prompt": "q", "img": GOOD, "r1": "x", "r2": "y", "pref": 0, "why": "be safe", "uid": "u-7"},
            {"prompt": "q", "img": GOOD, "r1": "x", "r2": "y", "pref": 1, "why": None, "uid": "u-8"},
            {"prompt": "q", "img": GOOD, "r1": "x", "r2": "y", "pref": 2, "why": None, "uid": "u-9"}]
    path = write_parquet(tmp_path / "c.parquet", rows, image_type=pa.binary(), image_field="img")
    fields = dict(question="prompt", image="img", response_1="r1", response_2="r2", label="pref",
                  principles="why", id="uid")
    pairs, report = load_preference_pairs(path, fields=fields, label_values=(0, 1))
    assert [(p.id, p.chosen, p.principles) for p in pairs] == [("u-7", "x", "be safe"), ("u-8", "y", None)]
    assert report.bad_rows[0].reason == "bad_label" and report.bad_rows[0].row == 2
    same, _ = load_preference_pairs(path, fields=PairFields(**fields), label_values=(0, 1))
    assert [(p.id, p.chosen) for p in same] == [(p.id, p.chosen) for p in pairs]
    with pytest.raises(ValueError, match="unknown field name key"):
        load_preference_pairs(path, fields={"questoin": "prompt"})
    with pytest.raises(ValueError, match=r"column\(s\) \['question'"):  # misconfigured: an error, not 3 drops
        load_preference_pairs(path)


# -------------------------------------------------------------------------------------------- BeaverTails-V


def test_beavertails_v_preference_field(tmp_path):
    rows = [{"question": "q0", "image": {"bytes": GOOD, "path": None}, "category": "c", "response_1": "r1",
             "response_2": "r2", "safer_response_id": 1, "more_helpful_response_id": 2},
            {"question": "q1", "image": {"bytes": GOOD, "path": None}, "category": "c", "response_1": "s1",
             "response_2": "s2", "safer_response_id": 2, "more_helpful_response_id": 0}]
    (tmp_path / "bv" / "cat_a").mkdir(parents=True)
    write_parquet(tmp_path / "bv" / "cat_a" / "train.parquet", rows)
    safer, rep = load_preference_pairs(tmp_path / "bv", format="beavertails_v", preference_field="safer_response_id")
    assert [(p.chosen, p.rejected) for p in safer] == [("r1", "r2"), ("s2", "s1")] and rep.rows_dropped == 0
    helpful, rep = load_preference_pairs(tmp_path / "bv", format="beavertails_v",
                                         preference_field="more_helpful_response_id")
    assert [(p.chosen, p.rejected) for p in helpful] == [("r2", "r1")]
    assert [(b.row, b.reason) for b in rep.bad_rows] == [(1, "bad_label")]
    with pytest.raises(ValueError, match="preference_field"):
        load_preference_pairs(tmp_path / "bv", format="beavertails_v", preference_field="better_response_id")


# ------------------------------------------------------------------------------------------- generic JSONL


def test_jsonl_pairs_with_image_paths(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "a.png").write_bytes(GOOD)
    (tmp_path / "img" / "bad.png").write_bytes(b"garbage")
    absolute = tmp_path / "abs.png"
    absolute.write_bytes(png((0, 0, 255)))
    rows = [{"image": "img/a.png", "question": "q0", "chosen": "c", "rejected": "r"},
            {"image": "img/nope.png", "question": "q1", "chosen": "c", "rejected": "r"},   # row 1
            {"image": "img/bad.png", "question": "q2", "chosen": "c", "rejected": "r"},    # row 2
            {"image": "img/a.png", "question": "q3", "chosen": "c"},                       # row 3
            {"image": str(absolute), "question": "q4", "chosen": "c", "rejected": "r"},
            {"question": "q5", "chosen": "c", "rejected": "r"},                            # row 5
            {"image": "img/a.png", "question": "", "chosen": "c", "rejected": "r"}]        # row 6
    path = write_jsonl(tmp_path / "pairs.jsonl", rows, extra_lines=["", "{not json"])      # row 8 (line 9)
    pairs, report = load_preference_pairs(path, format="jsonl_pairs")
    assert [p.question for p in pairs] == ["q0", "q4"]
    assert pairs[1].image.load().getpixel((0, 0)) == (0, 0, 255)
    assert [(b.row, b.reason) for b in report.bad_rows] == [
        (1, "image_not_found"), (2, "bad_image"), (3, "missing_field"), (5, "missing_image"), (6, "empty_text"),
        (8, "bad_json")]
    assert report.rows_read == 8 and report.rows_used == 2
    with pytest.raises(ValueError, match=r"pairs\.jsonl row 1: image_not_found"):
        load_preference_pairs(path, format="jsonl_pairs", on_bad_row="raise")


def test_all_rows_bad_is_an_error(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"question": "q", "chosen": "c", "rejected": "r"}])
    with pytest.raises(ValueError, match="no usable preference pair rows"):
        load_preference_pairs(path, format="jsonl_pairs")
    with pytest.raises(ValueError, match="on_bad_row"):
        load_preference_pairs(path, format="jsonl_pairs", on_bad_row="ignore")


def test_limit_and_records_from_memory(tmp_path):
    pairs, report = load_preference_pairs(align_anything_file(tmp_path), limit=2)
    assert len(pairs) == 2 and report.rows_read == 2
    p = PreferencePair("x", PIL.Image.new("RGB", (2, 2)), "q", "c", "r")
    assert isinstance(p.image, ImageSource) and p.image.load().size == (2, 2)
    assert PreferencePair("y", GOOD, "q", "c", "r").image.load().size == (4, 3)


# --------------------------------------------------------------------------------- prompts and point-wise


@pytest.mark.parametrize("kind", ["parquet", "jsonl"])
def test_prompts(tmp_path, kind):
    (tmp_path / "a.png").write_bytes(GOOD)
    rows = [{"image": "a.png", "question": "q0", "answer": "42"},
            {"image": "a.png", "question": "q1", "answer": None},
            {"image": "missing.png", "question": "q2", "answer": "1"},   # row 2
            {"image": "a.png", "question": None, "answer": "1"}]         # row 3
    if kind == "parquet":
        for r in rows:
            r["image"] = {"bytes": None, "path": r["image"]}
        path = write_parquet(tmp_path / "p.parquet", rows)
    else:
        path = write_jsonl(tmp_path / "p.jsonl", rows)
    prompts, report = load_prompts(path, fields={"ground_truth": "answer"})
    assert [(p.question, p.ground_truth) for p in prompts] == [("q0", "42"), ("q1", None)]
    assert [(b.row, b.reason) for b in report.bad_rows] == [(2, "image_not_found"), (3, "missing_field")]
    with pytest.raises(ValueError, match=r"row 2: image_not_found"):
        load_prompts(path, on_bad_row="raise")
    no_gt, _ = load_prompts(path)
    assert all(p.ground_truth is None for p in no_gt)


@pytest.mark.parametrize("kind", ["parquet", "jsonl"])
def test_scored_answers(tmp_path, kind):
    (tmp_path / "a.png").write_bytes(GOOD)
    rows = [{"img": "a.png", "q": "q0", "a": "ans", "human": 4},
            {"img": "a.png", "q": "q1", "a": "ans", "human": 2.5},
            {"img": "a.png", "q": "q2", "a": "ans", "human": 7},     # row 2: outside [1, 5]
            {"img": "a.png", "q": "q3", "a": "", "human": 3},        # row 3: empty answer
            {"img": "a.png", "q": "q4", "a": "ans", "human": None}]  # row 4: missing score
    if kind == "parquet":
        path = write_parquet(tmp_path / "s.parquet", rows, image_type=pa.string(), image_field="img")
    else:
        path = write_jsonl(tmp_path / "s.jsonl", rows + [{"img": "a.png", "q": "q5", "a": "x", "human": "high"}])
    fields = {"image": "img", "question": "q", "answer": "a", "score": "human"}
    scored, report = load_scored_answers(path, fields=fields, score_range=(1, 5))
    assert [(s.question, s.score) for s in scored] == [("q0", 4.0), ("q1", 2.5)]
    expected = [(2, "bad_score"), (3, "empty_text"), (4, "missing_field")] + ([(5, "bad_score")] * (kind == "jsonl"))
    assert [(b.row, b.reason) for b in report.bad_rows] == expected
    with pytest.raises(ValueError, match=r"row 2: bad_score"):
        load_scored_answers(path, fields=fields, score_range=(1, 5), on_bad_row="raise")


# --------------------------------------------------------------------------------------------- iteration


def take(it, n):
    return [next(it) for _ in range(n)]


def test_iterator_deterministic_and_each_record_once_per_epoch():
    a = EpochIterator(list(range(10)), 3, seed=7)
    b = EpochIterator(list(range(10)), 3, seed=7)
    assert a.batches_per_epoch == 3
    batches = take(a, 6)
    assert batches == take(b, 6)
    for epoch in (batches[:3], batches[3:]):
        seen = [x for batch in epoch for x in batch]
        assert len(seen) == 9 and len(set(seen)) == 9  # drop_last: one record left out per epoch
    assert batches[:3] != batches[3:]  # a new permutation each epoch
    assert take(EpochIterator(10, 3, seed=8), 3) != batches[:3]
    full = EpochIterator(10, 4, seed=1, drop_last=False)
    epoch = take(full, 3)
    assert [len(x) for x in epoch] == [4, 4, 2] and sorted(sum(epoch, [])) == list(range(10))
    assert take(EpochIterator(5, 2, shuffle=False, drop_last=False), 4) == [[0, 1], [2, 3], [4], [0, 1]]


@pytest.mark.parametrize("stop", [0, 1, 2, 3, 5])
def test_iterator_resume_continues_exactly(stop):
    ref = EpochIterator(11, 4, seed=3)
    expected = take(ref, 8)
    run = EpochIterator(11, 4, seed=3)
    take(run, stop)
    state = json.loads(json.dumps(run.state_dict()))  # goes through a checkpoint as plain ints
    assert set(state) >= {"epoch", "position", "seed"}
    resumed = EpochIterator(11, 4, seed=999)  # the checkpoint's seed wins
    resumed.load_state_dict(state)
    assert take(resumed, 8 - stop) == expected[stop:]
    with pytest.raises(ValueError, match="for 11 records, this dataset has 12"):
        EpochIterator(12, 4).load_state_dict(state)


def test_iterator_process_sharding():
    n, gbs, procs = 23, 6, 3
    ref = take(EpochIterator(n, gbs, seed=5), 7)
    shards = [EpochIterator(list(range(n)), gbs, seed=5, process_index=i, process_count=procs) for i in range(procs)]
    for step in range(7):
        parts = [next(s) for s in shards]
        assert all(len(p) == gbs // procs for p in parts)
        assert sum(parts, []) == ref[step]  # disjoint slices, union = the global batch
    # resuming with a different process count continues the same global order
    one = EpochIterator(n, gbs, seed=5)
    one.load_state_dict(shards[0].state_dict())
    two = [EpochIterator(n, gbs, seed=5, process_index=i, process_count=2) for i in range(2)]
    for it in two:
        it.load_state_dict(shards[0].state_dict())
    nxt = next(one)
    assert next(two[0]) + next(two[1]) == nxt
    # the uneven last batch of drop_last=False is array_split
    uneven = [EpochIterator(5, 4, shuffle=False, drop_last=False, process_index=i, process_count=2)
              for i in range(2)]
    assert [take(it, 2) for it in uneven] == [[[0, 1], [4]], [[2, 3], []]]


def test_iterator_validation_and_max_epochs():
    with pytest.raises(ValueError, match="divisible"):
        EpochIterator(10, 3, process_count=2)
    with pytest.raises(ValueError, match="no batch"):
        EpochIterator(3, 4)
    it = EpochIterator(4, 2, max_epochs=2)
    assert len(list(it)) == 4
    assert np.array_equal(EpochIterator(6, 2, seed=4).epoch_order(1), np.random.default_rng([4, 1]).permutation(6))


def test_score_fields_follow_the_label_and_contradicting_scores_are_bad_rows(tmp_path):
    rows = [aa_row(0, label=1, s1=9, s2=4), aa_row(1, label=2, s1=2.5, s2=7), aa_row(2, label=1, s1=3, s2=3),
            aa_row(3, label=2, s1=6, s2="high")]
    path = write_parquet(tmp_path / "s.parquet", [{**r, "s2": str(r["s2"])} for r in rows])
    pairs, report = load_preference_pairs(path, fields={"score_1": "s1", "score_2": "s2"})
    assert [(p.chosen, p.scores) for p in pairs] == [("a0", (9.0, 4.0)), ("b1", (7.0, 2.5))]
    assert [(b.row, b.reason) for b in report.bad_rows] == [(2, "scores_contradict_label"), (3, "bad_score")]
    unscored, _ = load_preference_pairs(path)
    assert all(p.scores is None for p in unscored)
    with pytest.raises(ValueError, match="score fields come in pairs"):
        load_preference_pairs(path, fields={"score_1": "s1"})


def test_length_grouped_batches_hold_similar_lengths_and_cover_each_epoch_once():
    """Two kinds of records, short (10) and long (100), shuffled: grouped batches are each of one kind (but
    for the one megabatch boundary batch), every record comes once per epoch, and the kinds alternate at
    random rather than in runs of a megabatch."""
    n, batch = 1600, 16  # two megabatches of 50 batches
    lengths = np.where(np.random.default_rng(0).random(n) < 0.5, 10, 100)
    grouped = EpochIterator(n, batch, seed=3, lengths=lengths)
    epoch = take(grouped, grouped.batches_per_epoch)
    assert sorted(sum(epoch, [])) == list(range(n))
    mixed = [b for b in epoch if len(set(lengths[b])) > 1]
    assert len(mixed) <= 2  # one per megabatch at most: where its short records end and its long ones begin
    kinds = [int(lengths[b[0]]) for b in epoch]
    assert max(len(list(run)) for _, run in itertools.groupby(kinds)) < 15  # a megabatch holds ~25 of each
    plain = take(EpochIterator(n, batch, seed=3), 100)
    assert sum(len(set(lengths[b])) > 1 for b in plain) > 90  # without grouping, nearly every batch mixes
    again = EpochIterator(n, batch, seed=3, lengths=lengths)
    assert take(again, 100) == epoch  # a deterministic function of (seed, epoch, lengths)


@pytest.mark.parametrize("stop", [0, 7, 99, 100, 130])
def test_length_grouped_iterator_resumes_exactly(stop):
    lengths = np.random.default_rng(1).integers(1, 300, 1000)
    expected = take(EpochIterator(1000, 10, seed=2, lengths=lengths), 150)
    run = EpochIterator(1000, 10, seed=2, lengths=lengths)
    take(run, stop)
    resumed = EpochIterator(1000, 10, seed=2, lengths=lengths)
    resumed.load_state_dict(json.loads(json.dumps(run.state_dict())))
    assert take(resumed, 150 - stop) == expected[stop:]
    with pytest.raises(ValueError, match="999 lengths for 1000 records"):
        EpochIterator(1000, 10, lengths=lengths[:999])
