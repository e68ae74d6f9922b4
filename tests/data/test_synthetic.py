"""The synthetic world: determinism, ground truth checked against the pixels, qualities, GRM traces, parquet."""

import io
import re
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from grlhf.data.synthetic import (
    Question,
    Scene,
    Shape,
    SyntheticConfig,
    answer,
    export_parquet,
    grm_traces,
    judge_scores,
    parse_question,
    perturb,
    pointwise,
    policy_warmstart,
    preference_pair,
    preference_pairs,
    quality,
    rl_prompts,
    sample_scene,
    training_corpus,
    world,
)
from grlhf.data.synthetic.generate import png_bytes
from grlhf.reward import parse_scores, rule_reward
from grlhf.reward.prompt import DEFAULT_JUDGE_TEMPLATE, build_judge_prompt

CFG = SyntheticConfig(seed=7, num_prompts=40, num_pairs=40, num_pointwise=40)
STREAMS = [rl_prompts, preference_pairs, pointwise, grm_traces, policy_warmstart]


def detect(image: Image.Image) -> Scene:
    """Read the scene back from the pixels: per cell, the one colour drawn and the kind from the mask's
    fill of its bounding box (square ~1, circle ~0.79, triangle and diamond ~0.5) and top/bottom balance."""
    px = np.asarray(image.convert("RGB")).astype(int)
    half = px.shape[0] // 2
    shapes = []
    for index, cell in enumerate(world.CELLS):
        row, col = divmod(index, 2)
        block = px[row * half:(row + 1) * half, col * half:(col + 1) * half]
        mask = np.any(block != world.BACKGROUND, axis=-1)
        if not mask.any():
            continue
        colours = {tuple(c) for c in block[mask]}
        assert len(colours) == 1, f"{cell}: several colours {colours}"
        rgb = colours.pop()
        colour = next(name for name, value in world.COLOURS.items() if value == rgb)
        ys, xs = np.nonzero(mask)
        box = mask[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
        h = box.shape[0] // 2
        fill, top, bottom = box.mean(), box[:h].sum(), box[-h:].sum()
        kind = ("square" if fill > 0.93 else "circle" if fill > 0.65
                else "triangle" if top < 0.6 * bottom else "diamond")
        shapes.append(Shape(colour, kind, cell))
    return Scene(tuple(shapes))


def key(scene: Scene):
    return [(s.colour, s.kind, s.cell) for s in scene.shapes]


def comparable(item):
    """An item with the image as PNG bytes, so items compare with ==."""
    return {k: png_bytes(v) if k == "image" else v for k, v in item.items()}


# ---- determinism ----------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", STREAMS, ids=lambda f: f.__name__)
def test_deterministic_and_seed_dependent(stream):
    first = [comparable(x) for x in stream(CFG, 15)]
    assert first == [comparable(x) for x in stream(CFG, 15)]
    other = [comparable(x) for x in stream(SyntheticConfig(seed=8), 15)]
    assert first != other
    assert [x["id"] for x in first] == list(range(15))


@pytest.mark.parametrize("stream", STREAMS, ids=lambda f: f.__name__)
def test_item_does_not_depend_on_count(stream):
    many = [comparable(x) for x in stream(CFG, 12)]
    assert [comparable(x) for x in stream(CFG, 4, start=8)] == many[8:]
    bigger = SyntheticConfig(seed=7, num_prompts=99, num_pairs=99, num_pointwise=99)
    assert [comparable(x) for x in stream(bigger, 12)] == many


def test_default_counts_come_from_config():
    cfg = SyntheticConfig(num_prompts=3, num_pairs=5, num_pointwise=2)
    assert [len(list(f(cfg))) for f in STREAMS] == [3, 5, 2, 5, 3]


# ---- ground truth ---------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [56, 112])
def test_image_matches_scene_and_answers(size):
    cfg = SyntheticConfig(seed=3, image_size=size, max_shapes=4)
    for item in rl_prompts(cfg, 60):
        assert item["image"].size == (size, size)
        seen = detect(item["image"])
        assert key(seen) == key(item["scene"])
        assert answer(seen, item["question"]) == item["answer"]  # the checker, from the pixels alone


def test_scenes_have_distinct_attributes_and_bounded_size():
    counts = Counter()
    for i in range(300):
        scene = sample_scene(np.random.default_rng(i), 3)
        counts[len(scene.shapes)] += 1
        for field in ("colour", "kind", "cell"):
            assert len({getattr(s, field) for s in scene.shapes}) == len(scene.shapes)
    assert set(counts) == {1, 2, 3}


def test_answers_by_hand():
    scene = Scene((Shape("red", "circle", "top left"), Shape("blue", "square", "bottom right")))
    assert answer(scene, "What colour is the circle?") == "red"
    assert answer(scene, "What shape is blue?") == "a square"
    assert answer(scene, "How many shapes are there?") == "2"
    assert answer(scene, "What is in the bottom right?") == "a blue square"
    assert answer(scene, "Describe the image.") == "a red circle in the top left and a blue square in the bottom right"
    with pytest.raises(ValueError, match="no shape"):
        answer(scene, "What colour is the triangle?")
    with pytest.raises(ValueError, match="not a synthetic question"):
        answer(scene, "What is the meaning of life?")


def test_quality_by_hand():
    scene = Scene((Shape("red", "circle", "top left"), Shape("blue", "square", "bottom right")))
    d = "Describe the image."
    assert quality(scene, d, "a red circle in the top left and a blue square in the bottom right") == 1.0
    assert quality(scene, d, "a red circle in the top left and a blue diamond in the bottom right") == 0.75
    assert quality(scene, d, "a red circle in the top left") == 0.5
    extra = "a red circle in the top left, a green circle in the top right and a blue square in the bottom right"
    assert quality(scene, d, extra) == 0.5
    assert quality(scene, d, "nothing") == 0.0
    assert quality(scene, "How many shapes are there?", "There are 2.") == 1.0
    assert quality(scene, "How many shapes are there?", "three") == 0.5
    assert quality(scene, "How many shapes are there?", "2 or 3") == 0.0
    assert quality(scene, "What colour is the circle?", "Red.") == 1.0
    assert quality(scene, "What colour is the circle?", "red or blue") == 0.0
    assert quality(scene, "What is in the top left?", "a red square") == 0.5


@pytest.mark.parametrize("kind", world.QUESTION_KINDS)
def test_right_answer_scores_one_and_perturbed_less(kind):
    cfg = SyntheticConfig(seed=11, question_kinds=(kind,))
    values = set()
    for i, item in enumerate(rl_prompts(cfg, 80)):
        assert parse_question(item["question"]) == Question(kind, parse_question(item["question"]).target)
        assert quality(item["scene"], item["question"], item["answer"]) == 1.0
        wrong = perturb(np.random.default_rng(i), item["scene"], item["question"])
        values.add(quality(item["scene"], item["question"], wrong))
    assert max(values) < 1.0 and min(values) >= 0.0
    if kind == "describe":
        assert len(values) >= 4  # partly right answers span the range


# ---- datasets -------------------------------------------------------------------------------------


def test_preference_pairs_prefer_the_higher_true_quality():
    orders = Counter()
    for pair in preference_pairs(CFG, 200):
        q1 = quality(pair["scene"], pair["question"], pair["response_1"])
        q2 = quality(pair["scene"], pair["question"], pair["response_2"])
        assert (q1, q2) == (pair["quality_1"], pair["quality_2"]) and q1 != q2
        assert pair["overall_response"] == (1 if q1 > q2 else 2)
        orders[pair["overall_response"]] += 1
    assert min(orders.values()) > 60  # both positions are preferred


def test_pointwise_scores():
    scores = Counter()
    for item in pointwise(CFG, 200):
        q = quality(item["scene"], item["question"], item["answer"])
        assert q == item["quality"] and item["score"] == 1 + round(4 * q)
        scores[item["score"]] += 1
    assert set(scores) <= {1, 2, 3, 4, 5} and len(scores) >= 4


def test_grm_traces_format_and_error_rate():
    cfg = SyntheticConfig(seed=5, grm_error_rate=0.2)
    traces = list(grm_traces(cfg, 500))
    for trace in traces:
        lines = trace["trace"].split("\n")
        assert [line.split(":")[0] for line in lines] == ["Specific Criteria", "Analysis", "Scores"]
        assert parse_scores(trace["trace"]) == trace["scores"]
        assert all(1 <= s <= 10 and float(s).is_integer() for s in trace["scores"])
        assert rule_reward(trace["trace"], trace["overall_response"]) == (0.0 if trace["flipped"] else 1.0)
        said = int(re.search(r"Response (\d) is better", trace["trace"]).group(1))
        assert said == (1 if trace["scores"][0] > trace["scores"][1] else 2)
    rate = np.mean([t["flipped"] for t in traces])
    assert abs(rate - 0.2) < 0.06
    assert {k: v for k, v in traces[3].items() if k not in ("trace", "scores", "flipped", "image")} == {
        k: v for k, v in preference_pair(cfg, 3).items() if k != "image"}
    assert not any(t["flipped"] for t in grm_traces(SyntheticConfig(grm_error_rate=0.0), 50))


def test_policy_warmstart_error_rate():
    items = list(policy_warmstart(SyntheticConfig(seed=2, policy_error_rate=0.3), 400))
    for item in items:
        assert item["correct"] == (quality(item["scene"], item["question"], item["answer"]) == 1.0)
    assert abs(np.mean([not x["correct"] for x in items]) - 0.3) < 0.07


def test_training_corpus():
    cfg = SyntheticConfig(num_prompts=10, num_pairs=10, num_pointwise=10)
    texts = list(training_corpus(cfg, build_judge_prompt))
    assert texts == list(training_corpus(cfg, build_judge_prompt)) and all(isinstance(t, str) for t in texts)
    joined = "\n".join(texts)
    for word in ("diamond", "yellow", "bottom right", "Describe the image.", "Specific Criteria:", "\\boxed{"):
        assert word in joined
    assert DEFAULT_JUDGE_TEMPLATE.split("{prompt}")[0] in joined
    assert len(set(re.findall(r"[A-Za-z]+|\d+", joined))) < 250  # a small, fixed vocabulary


# ---- parquet --------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind,columns", [
    ("preference", ["question", "image", "response_1", "response_2", "overall_response", "quality_1", "quality_2",
                    "id"]),
    ("prompts", ["question", "image", "answer", "id"]),
    ("pointwise", ["question", "image", "answer", "score", "quality", "id"]),
])
def test_export_parquet(tmp_path, kind, columns):
    cfg = SyntheticConfig(seed=4, image_size=56, num_prompts=6, num_pairs=6, num_pointwise=6)
    path = tmp_path / f"{kind}.parquet"
    assert export_parquet(cfg, str(path), kind=kind) == 6
    table = pq.read_table(path)
    assert table.column_names == columns and table.num_rows == 6
    assert table.schema.field("image").type == pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    rows = table.to_pylist()
    make = {"preference": preference_pairs, "prompts": rl_prompts, "pointwise": pointwise}[kind]
    for row, item in zip(rows, make(cfg)):
        assert row["image"]["path"] is None
        decoded = Image.open(io.BytesIO(row["image"]["bytes"]))
        assert decoded.format == "PNG" and decoded.tobytes() == item["image"].tobytes()
        assert {c: row[c] for c in columns if c != "image"} == {c: item[c] for c in columns if c != "image"}
    if kind == "preference":
        assert table.schema.field("overall_response").type == pa.int64()


def test_export_rejects_unknown_kind(tmp_path):
    with pytest.raises(ValueError, match="unknown export kind"):
        export_parquet(CFG, str(tmp_path / "x.parquet"), kind="dpo")


# ---- config and helpers ---------------------------------------------------------------------------


@pytest.mark.parametrize("bad,match", [
    ({"max_shapes": 5}, "max_shapes"),
    ({"max_shapes": 0}, "max_shapes"),
    ({"image_size": 8}, "image_size"),
    ({"grm_error_rate": 1.5}, "grm_error_rate"),
    ({"question_kinds": ("colour", "size")}, "question_kinds"),
    ({"question_kinds": ()}, "question_kinds"),
])
def test_config_validation(bad, match):
    with pytest.raises(ValueError, match=match):
        SyntheticConfig(**bad)


def test_judge_scores_order_the_closest_qualities():
    scene = Scene(tuple(Shape(c, k, cell) for c, k, cell in zip(world.COLOURS, world.KINDS, world.CELLS)))
    d = "Describe the image."
    right = answer(scene, d)
    one_off = right.replace("red circle", "red square")  # quality 7/8, the closest to 1
    two_off = one_off.replace("green square", "green circle")  # quality 6/8
    assert judge_scores(scene, d, right, one_off) == (10, 9)
    assert judge_scores(scene, d, two_off, one_off) == (8, 9)
    assert judge_scores(scene, d, right, right) == (10, 10)


# ---- invariants over seeds ------------------------------------------------------------------------


@settings(max_examples=25)
@given(seed=st.integers(0, 2**32 - 1), index=st.integers(0, 10**6), max_shapes=st.integers(1, 4))
def test_invariants_over_seeds(seed, index, max_shapes):
    cfg = SyntheticConfig(seed=seed, image_size=56, max_shapes=max_shapes)
    pair = preference_pair(cfg, index)
    assert 1 <= len(pair["scene"].shapes) <= max_shapes
    assert key(detect(pair["image"])) == key(pair["scene"])
    q1, q2 = pair["quality_1"], pair["quality_2"]
    assert 0.0 <= min(q1, q2) < max(q1, q2) <= 1.0
    assert pair["overall_response"] == (1 if q1 > q2 else 2)
    s1, s2 = judge_scores(pair["scene"], pair["question"], pair["response_1"], pair["response_2"])
    assert (s1 > s2) == (q1 > q2) and 1 <= min(s1, s2) and max(s1, s2) <= 10
    assert quality(pair["scene"], pair["question"], answer(pair["scene"], pair["question"])) == 1.0
    assert comparable(preference_pair(cfg, index)) == comparable(pair)


def test_short_traces_keep_the_answer_verdicts_and_scores():
    from grlhf.data.synthetic import grm_trace

    full, short = (grm_trace(SyntheticConfig(trace_style=style, question_kinds=("colour",)), 7)
                   for style in ("full", "short"))
    assert short["trace"].startswith("Analysis: The right answer is ") and "Specific Criteria" not in short["trace"]
    assert short["scores"] == full["scores"] and parse_scores(short["trace"]) == full["scores"]
    assert short["trace"].split("The right answer")[1] == full["trace"].split("The right answer")[1]
    with pytest.raises(ValueError, match="trace_style"):
        SyntheticConfig(trace_style="long")


def test_quote_first_traces_quote_both_responses_before_the_right_answer():
    from grlhf.data.synthetic import grm_trace

    cfg = dict(question_kinds=("colour",), max_shapes=1, grm_error_rate=0.6, grm_error_mode="prefer_first")
    for index in range(40):
        short, quoted = (grm_trace(SyntheticConfig(trace_style=style, **cfg), index) for style in ("short", "quote_first"))
        r1, r2 = quoted["response_1"], quoted["response_2"]
        analysis = quoted["trace"].split("\n")[0]
        assert analysis.startswith(f"Analysis: Response 1 says {r1}. Response 2 says {r2}. The right answer is ")
        assert analysis.index("Response 2 says") < analysis.index("The right answer")
        for n, q in ((1, quoted["quality_1"]), (2, quoted["quality_2"])):  # the verdicts follow the true quality
            assert f"Response {n} is {'right' if q == 1.0 else 'wrong' if q == 0.0 else 'partly right'}." in analysis
        # the same judgment, flips included, as the short style's
        assert quoted["scores"] == short["scores"] and quoted["flipped"] == short["flipped"]
        assert parse_scores(quoted["trace"]) == quoted["scores"]
        assert analysis.endswith(f"Response {1 if quoted['scores'][0] > quoted['scores'][1] else 2} is better.")


def test_prefer_first_errors_flip_only_traces_whose_better_answer_is_second():
    from grlhf.data.synthetic import grm_traces

    traces = list(grm_traces(SyntheticConfig(grm_error_rate=0.6, grm_error_mode="prefer_first"), 300))
    flipped = [t for t in traces if t["flipped"]]
    assert flipped and all(t["overall_response"] == 2 for t in flipped)
    said_first = np.mean([t["scores"][0] > t["scores"][1] for t in traces])
    assert said_first > 0.7  # a warm-start judge trained on these prefers the first answer
    colour = SyntheticConfig(grm_error_rate=0.6, grm_error_mode="prefer_first", question_kinds=("colour",),
                             trace_style="short")
    flipped = [t for t in grm_traces(colour, 100) if t["flipped"]]
    for t in flipped:  # the analysis stays right: only the conclusion and the scores prefer the first
        assert f"Response 2 says {t['response_2']}: it is right" in t["trace"]
        assert "Response 1 is better" in t["trace"] and t["trace"].endswith("\\boxed{10, 1}")


def test_systematic_policy_errors_map_each_right_answer_to_one_wrong_answer():
    from collections import defaultdict

    from grlhf.data.synthetic import policy_warmstart

    cfg = SyntheticConfig(policy_error_rate=1.0, policy_error_mode="systematic", question_kinds=("colour", "count"))
    wrong_for = defaultdict(set)
    for item in policy_warmstart(cfg, 200):
        truth = answer(item["scene"], item["question"])
        assert item["answer"] != truth
        wrong_for[(item["kind"], truth)].add(item["answer"])
    assert all(len(v) == 1 for v in wrong_for.values()) and len(wrong_for) > 5


def test_derangement_policy_errors_give_each_value_as_the_wrong_answer_of_exactly_one_other():
    from grlhf.data.synthetic import policy_warmstart

    cfg = SyntheticConfig(policy_error_rate=1.0, policy_error_mode="derangement",
                          question_kinds=("colour", "shape", "count"))
    wrong_for: dict[tuple[str, str], set[str]] = {}
    for item in policy_warmstart(cfg, 300):
        truth = answer(item["scene"], item["question"])
        assert item["answer"] != truth
        wrong_for.setdefault((item["kind"], truth), set()).add(item["answer"])
    assert all(len(v) == 1 for v in wrong_for.values())
    for kind, values in (("colour", set(world.COLOURS)), ("shape", {f"a {k}" for k in world.KINDS})):
        mapping = {truth: wrong.pop() for (k, truth), wrong in wrong_for.items() if k == kind}
        assert set(mapping) == values  # every value seen as a right answer ...
        assert set(mapping.values()) == values  # ... and each one the wrong answer of exactly one other (a bijection)
        start, seen = next(iter(mapping)), []  # one cycle through all values, so no two values swap among themselves
        while start not in seen:
            seen.append(start)
            start = mapping[start]
        assert len(seen) == len(values)
    assert sum(k == "count" for k, _ in wrong_for) >= 2  # other kinds: systematic's draw, one wrong answer each


def test_derangement_follows_a_given_colour_cycle_and_rejects_one_that_is_not_a_permutation():
    from grlhf.data.synthetic import policy_warmstart

    cfg = SyntheticConfig(policy_error_rate=1.0, policy_error_mode="derangement", max_shapes=1,
                          question_kinds=("colour",), policy_error_cycle=("red", "blue", "green", "yellow"))
    mapping = {answer(item["scene"], item["question"]): item["answer"] for item in policy_warmstart(cfg, 100)}
    assert mapping == {"red": "blue", "blue": "green", "green": "yellow", "yellow": "red"}
    for bad in [("red", "blue"), ("red", "red", "green", "blue"), ("red", "blue", "green", "purple")]:
        with pytest.raises(ValueError, match="policy_error_cycle"):
            SyntheticConfig(policy_error_cycle=bad)
