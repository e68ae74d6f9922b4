"""Datasets of the synthetic world: RL prompts, preference pairs, point-wise answers, warm-start texts.

Every item is a function of ``(cfg, index)`` alone: its generator is seeded with
``(cfg.seed, stream code, index)``, so item i is the same however many items are asked for, and
iterating twice gives identical items. Items are plain dicts (the row layout of the real datasets)
plus a ``scene`` entry for checking answers with ``world.quality``.
"""

from __future__ import annotations

import io
import zlib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional

import numpy as np
from PIL import Image

from grlhf.data.synthetic import world
from grlhf.data.synthetic.world import Question, Scene

TRACE_STYLES = ("full", "short", "quote_first")
GRM_ERROR_MODES = ("uniform", "prefer_first")
POLICY_ERROR_MODES = ("random", "systematic", "derangement")

# One code per stream, so the streams of one seed never share random numbers.
_STREAMS = {"prompt": 1, "pair": 2, "pointwise": 3, "grm": 4, "policy": 5}


@dataclass(frozen=True)
class SyntheticConfig:
    """Size and difficulty of the synthetic task."""

    seed: int = 0
    image_size: int = 112  # patch 14, merge 2: 112 px -> 8x8 patches -> 16 LLM tokens
    max_shapes: int = 3
    num_prompts: int = 1000
    num_pairs: int = 1000
    num_pointwise: int = 500
    grm_error_rate: float = 0.2  # fraction of GRM warm-start traces that prefer the worse answer
    # uniform: any trace may be flipped; prefer_first: only traces whose better answer is second are (a
    # warm-start judge with a first-position bias, the failure the paper's RL stage and both orders fix)
    grm_error_mode: str = "uniform"
    policy_error_rate: float = 0.5  # fraction of policy warm-start answers that are not fully right
    # full: the paper's three lines; short: Analysis (answer, verdicts) + Scores only; quote_first: short, with both
    # responses quoted before the right answer is stated (see grm_trace)
    trace_style: str = "full"
    # random: a wrong warm-start answer is a random perturbation; systematic: always the same wrong answer
    # for a given right one (red -> the same other colour), so a warm-started policy's greedy answer is wrong;
    # derangement: likewise, and each value the wrong answer of exactly one other (systematic_error)
    policy_error_mode: str = "random"
    # derangement's order of the colours (each one's wrong answer is the next, the last's the first); empty: drawn
    # from the seed. Shapes always take a drawn order.
    policy_error_cycle: tuple[str, ...] = ()
    question_kinds: tuple[str, ...] = field(default=world.QUESTION_KINDS)

    def __post_init__(self) -> None:
        if not 1 <= self.max_shapes <= world.MAX_SHAPES:
            raise ValueError(f"max_shapes must be in [1, {world.MAX_SHAPES}], got {self.max_shapes}")
        if self.image_size < 16:
            raise ValueError(f"image_size must be at least 16, got {self.image_size}")
        for name in ("grm_error_rate", "policy_error_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        unknown = set(self.question_kinds) - set(world.QUESTION_KINDS)
        if unknown or not self.question_kinds:
            raise ValueError(
                f"question_kinds must be a non-empty subset of {world.QUESTION_KINDS}, got {self.question_kinds}")
        if self.policy_error_cycle and not is_colour_cycle(self.policy_error_cycle):
            raise ValueError(f"policy_error_cycle must list each of {tuple(world.COLOURS)} once, "
                             f"got {self.policy_error_cycle}")
        if self.policy_error_mode not in POLICY_ERROR_MODES:
            raise ValueError(f"policy_error_mode must be one of {POLICY_ERROR_MODES}, got {self.policy_error_mode!r}")
        if self.grm_error_mode not in GRM_ERROR_MODES:
            raise ValueError(f"grm_error_mode must be one of {GRM_ERROR_MODES}, got {self.grm_error_mode!r}")
        if self.trace_style not in TRACE_STYLES:
            raise ValueError(f"trace_style must be one of {TRACE_STYLES}, got {self.trace_style!r}")
        if min(self.num_prompts, self.num_pairs, self.num_pointwise) < 0:
            raise ValueError("dataset sizes must be non-negative")


def is_colour_cycle(order) -> bool:
    """Whether ``order`` lists each of the world's colours once (a ``policy_error_cycle``)."""
    return sorted(order) == sorted(world.COLOURS)


def item_rng(cfg: SyntheticConfig, stream: str, index: int) -> np.random.Generator:
    """The generator of item ``index`` of ``stream``."""
    return np.random.default_rng([cfg.seed, _STREAMS[stream], index])


def _draw(cfg: SyntheticConfig, rng: np.random.Generator) -> tuple[Scene, Question]:
    scene = world.sample_scene(rng, cfg.max_shapes)
    return scene, world.sample_question(rng, scene, cfg.question_kinds)


def _base(cfg: SyntheticConfig, index: int, scene: Scene, question: Question) -> dict[str, Any]:
    return {"id": index, "image": world.render(scene, cfg.image_size), "question": question.text,
            "kind": question.kind, "scene": scene}


# ---- single items ----------------------------------------------------------------------------------


def rl_prompt(cfg: SyntheticConfig, index: int) -> dict[str, Any]:
    """``id, image, question, answer`` (ground truth), ``kind``, ``scene``."""
    scene, question = _draw(cfg, item_rng(cfg, "prompt", index))
    return {**_base(cfg, index, scene, question), "answer": world.answer(scene, question)}


def preference_pair(cfg: SyntheticConfig, index: int) -> dict[str, Any]:
    """``response_1, response_2``, ``overall_response`` (1 or 2: the higher true quality), ``quality_1/2``.

    Half the pairs hold the right answer against a perturbed one, half two perturbed answers of
    different quality; the order is random. Qualities never tie.
    """
    rng = item_rng(cfg, "pair", index)
    scene, question = _draw(cfg, rng)
    right = world.answer(scene, question)
    better, worse = right, world.perturb(rng, scene, question)
    if rng.random() < 0.5:
        a, b = world.perturb(rng, scene, question), world.perturb(rng, scene, question)
        qa, qb = world.quality(scene, question, a), world.quality(scene, question, b)
        if qa != qb:
            better, worse = (a, b) if qa > qb else (b, a)
    first, second = (better, worse) if rng.random() < 0.5 else (worse, better)
    q1, q2 = world.quality(scene, question, first), world.quality(scene, question, second)
    return {**_base(cfg, index, scene, question), "response_1": first, "response_2": second,
            "overall_response": 1 if q1 > q2 else 2, "quality_1": q1, "quality_2": q2}


def pointwise_item(cfg: SyntheticConfig, index: int) -> dict[str, Any]:
    """``answer`` with its true ``quality`` and ``score`` = 1 + round(4 quality), the 1-5 scale of MLLM-as-a-Judge."""
    rng = item_rng(cfg, "pointwise", index)
    scene, question = _draw(cfg, rng)
    text = world.answer(scene, question) if rng.random() < 0.25 else world.perturb(rng, scene, question)
    q = world.quality(scene, question, text)
    return {**_base(cfg, index, scene, question), "answer": text, "quality": q, "score": 1 + round(4 * q)}


_CRITERIA = {
    "colour": "the colour must match the shape in the image (weight 0.8); the answer should be short (weight 0.2).",
    "shape": "the shape must match the colour in the image (weight 0.8); the answer should be short (weight 0.2).",
    "count": "the number must match the shapes in the image (weight 0.8); the answer should be short (weight 0.2).",
    "position": "the colour and the shape must match the cell in the image (weight 0.8); "
                "the answer should be short (weight 0.2).",
    "describe": "every shape must be named with its colour, shape and cell (weight 0.6); "
                "no shape may be made up (weight 0.4).",
}


def _verdict(q: float) -> str:
    return "is right" if q == 1.0 else "is wrong" if q == 0.0 else "is partly right"


def grm_trace(cfg: SyntheticConfig, index: int) -> dict[str, Any]:
    """Preference pair ``index`` with a warm-start ``trace`` in the paper's format (the judge prompt is
    built by ``grlhf.reward``).

    The trace's scores come from ``world.judge_scores`` (the better answer scores higher), except in a
    ``cfg.grm_error_rate`` fraction of traces (``flipped``) where the judgment is wrong: RL has something
    to fix. ``uniform`` errors swap the two verdicts and the two scores (the stated facts stay right);
    ``prefer_first`` errors (only where the better answer is second) keep the whole analysis right and
    flip only the conclusion and the scores: a judge whose reasoning is sound but whose decision leans
    to the first position.
    """
    pair = preference_pair(cfg, index)
    flipped = bool(item_rng(cfg, "grm", index).random() < cfg.grm_error_rate)
    if cfg.grm_error_mode == "prefer_first":
        flipped = flipped and pair["overall_response"] == 2
    scene, question = pair["scene"], world.parse_question(pair["question"])
    s1, s2 = world.judge_scores(scene, question, pair["response_1"], pair["response_2"])
    q1, q2 = pair["quality_1"], pair["quality_2"]
    if flipped:
        s1, s2 = s2, s1
        if cfg.grm_error_mode == "uniform":
            q1, q2 = q2, q1
    facts = f"The image shows {world.describe(scene.shapes)}."
    if question.kind != "describe":
        right = f"The right answer is {world.answer(scene, question)}."
        facts = right if cfg.trace_style != "full" else f"{facts} {right}"
    better = f"Response {1 if s1 > s2 else 2} is better."
    r1, r2 = pair["response_1"], pair["response_2"]
    if cfg.trace_style == "quote_first":
        # the quotes come before the right answer, so a small model cannot fill them in from it: it must copy
        analysis = (f"Response 1 says {r1}. Response 2 says {r2}. {facts} "
                    f"Response 1 {_verdict(q1)}. Response 2 {_verdict(q2)}. {better}")
    else:  # each response is quoted before its verdict, so the check is a comparison of nearby text
        analysis = f"{facts} Response 1 says {r1}: it {_verdict(q1)}. Response 2 says {r2}: it {_verdict(q2)}. {better}"
    criteria = "" if cfg.trace_style != "full" else f"Specific Criteria: {_CRITERIA[question.kind]}\n"
    trace = (f"{criteria}Analysis: {analysis}\n"
             f"Scores: \\boxed{{{s1}, {s2}}}")
    return {**pair, "trace": trace, "scores": (s1, s2), "flipped": flipped}


def policy_answer(cfg: SyntheticConfig, index: int) -> dict[str, Any]:
    """A policy warm-start ``answer``: right, except with probability ``cfg.policy_error_rate``."""
    rng = item_rng(cfg, "policy", index)
    scene, question = _draw(cfg, rng)
    wrong = bool(rng.random() < cfg.policy_error_rate)
    text = world.answer(scene, question)
    if wrong:
        text = world.perturb(rng, scene, question) if cfg.policy_error_mode == "random" else \
            systematic_error(cfg, scene, question)
    return {**_base(cfg, index, scene, question), "answer": text, "correct": not wrong}


def systematic_error(cfg: SyntheticConfig, scene: Scene, question: Question) -> str:
    """The wrong answer a ``policy_error_mode=systematic`` or ``derangement`` warm start gives.

    systematic: drawn by a generator seeded by the right answer, so every scene with that answer gets the same
    wrong one (red -> the same other colour), and two right answers may share it (red -> green, blue -> green).
    derangement: for colour and shape questions, a cycle through the values (``cfg.policy_error_cycle``, or an
    order drawn from the seed; seed 0: red -> green -> blue -> yellow -> red), so each value is the wrong answer of
    exactly one other: RL that lowers a wrong answer lowers it only where it is wrong. Other kinds fall back to
    systematic's draw."""
    right = world.answer(scene, question)
    values = {"colour": tuple(world.COLOURS), "shape": world.KINDS}.get(question.kind)
    if cfg.policy_error_mode == "derangement" and values is not None:
        order = list(cfg.policy_error_cycle) if question.kind == "colour" and cfg.policy_error_cycle else \
            [str(v) for v in np.random.default_rng([cfg.seed, _STREAMS["policy"]]).permutation(values)]
        wrong = order[(order.index(right.split()[-1]) + 1) % len(order)]
        return wrong if question.kind == "colour" else world.noun_phrase(None, wrong)
    rng = np.random.default_rng([cfg.seed, _STREAMS["policy"], zlib.crc32(f"{question.kind}|{right}".encode())])
    return world.perturb(rng, scene, question)


# ---- streams ---------------------------------------------------------------------------------------


def _stream(make, cfg: SyntheticConfig, count: int, start: int) -> Iterator[dict[str, Any]]:
    return (make(cfg, i) for i in range(start, start + count))


def rl_prompts(cfg: SyntheticConfig, count: Optional[int] = None, start: int = 0) -> Iterator[dict[str, Any]]:
    """``count`` (default ``cfg.num_prompts``) RL prompts from index ``start``."""
    return _stream(rl_prompt, cfg, cfg.num_prompts if count is None else count, start)


def preference_pairs(cfg: SyntheticConfig, count: Optional[int] = None, start: int = 0) -> Iterator[dict[str, Any]]:
    """``count`` (default ``cfg.num_pairs``) preference pairs from index ``start``."""
    return _stream(preference_pair, cfg, cfg.num_pairs if count is None else count, start)


def pointwise(cfg: SyntheticConfig, count: Optional[int] = None, start: int = 0) -> Iterator[dict[str, Any]]:
    """``count`` (default ``cfg.num_pointwise``) point-wise answers from index ``start``."""
    return _stream(pointwise_item, cfg, cfg.num_pointwise if count is None else count, start)


def grm_traces(cfg: SyntheticConfig, count: Optional[int] = None, start: int = 0) -> Iterator[dict[str, Any]]:
    """``count`` (default ``cfg.num_pairs``) GRM warm-start traces, trace i built on preference pair i."""
    return _stream(grm_trace, cfg, cfg.num_pairs if count is None else count, start)


def policy_warmstart(cfg: SyntheticConfig, count: Optional[int] = None, start: int = 0) -> Iterator[dict[str, Any]]:
    """``count`` (default ``cfg.num_prompts``) policy warm-start answers from index ``start``."""
    return _stream(policy_answer, cfg, cfg.num_prompts if count is None else count, start)


def vocabulary_texts() -> Iterator[str]:
    """Every question, short answer and criteria text the world can produce, and every count."""
    for kind in world.KINDS:
        yield Question("colour", kind).text
        yield world.noun_phrase(None, kind)
        for colour in world.COLOURS:
            yield world.noun_phrase(colour, kind)
    for colour in world.COLOURS:
        yield Question("shape", colour).text
        yield colour
    for cell in world.CELLS:
        yield Question("position", cell).text
    yield Question("count").text
    yield Question("describe").text
    yield " ".join(str(n) for n in range(10))
    yield from _CRITERIA.values()


def training_corpus(cfg: SyntheticConfig, judge_prompt: Callable[[str, str, str], str]) -> Iterator[str]:
    """All texts a tokenizer for the synthetic task should know: the vocabulary, prompts with answers,
    point-wise and warm-start answers, and the judge prompts (``judge_prompt(question, response_1,
    response_2)``, the reward layer's template) with their traces."""
    yield from vocabulary_texts()
    for item in rl_prompts(cfg):
        yield f"{item['question']}\n{item['answer']}"
    for item in pointwise(cfg):
        yield f"{item['question']}\n{item['answer']}"
    for item in policy_warmstart(cfg):
        yield f"{item['question']}\n{item['answer']}"
    for item in grm_traces(cfg):
        yield f"{judge_prompt(item['question'], item['response_1'], item['response_2'])}\n{item['trace']}"


# ---- parquet export (Align-Anything text-image-to-text schema) -------------------------------------


def png_bytes(image: Image.Image) -> bytes:
    """The image as PNG bytes (deterministic for a given Pillow)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


_EXPORTS = {
    "preference": (preference_pairs, ("response_1", "response_2", "overall_response", "quality_1", "quality_2")),
    "prompts": (rl_prompts, ("answer",)),
    "pointwise": (pointwise, ("answer", "score", "quality")),
}


def export_parquet(cfg: SyntheticConfig, path: str, kind: str = "preference") -> int:
    """Write one dataset as parquet: ``question``, ``image`` ({"bytes": PNG, "path": null}, the layout of
    the HF datasets Image feature), the dataset's columns and ``id`` (the item index: the item, with its
    scene, is ``make(cfg, id)``). Returns the number of rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if kind not in _EXPORTS:
        raise ValueError(f"unknown export kind {kind!r}; expected one of {sorted(_EXPORTS)}")
    make, columns = _EXPORTS[kind]
    rows = list(make(cfg))
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    arrays = {
        "question": pa.array([r["question"] for r in rows], pa.string()),
        "image": pa.array([{"bytes": png_bytes(r["image"]), "path": None} for r in rows], image_type),
    }
    types = {"overall_response": pa.int64(), "score": pa.int64(), "quality": pa.float64(),
             "quality_1": pa.float64(), "quality_2": pa.float64()}
    for column in columns:
        arrays[column] = pa.array([r[column] for r in rows], types.get(column, pa.string()))
    arrays["id"] = pa.array([r["id"] for r in rows], pa.int64())
    pq.write_table(pa.table(arrays), path)
    return len(rows)
