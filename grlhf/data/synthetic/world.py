"""The synthetic world: scenes of coloured shapes, their images, questions, true answers and quality.

A scene puts 1 to ``max_shapes`` shapes into the cells of a 2x2 grid. Within a scene colours, kinds
and cells are all distinct, so every question below has exactly one right answer:

- colour:   "What colour is the circle?"      -> "red"
- shape:    "What shape is red?"              -> "a circle"
- count:    "How many shapes are there?"      -> "2"
- position: "What is in the top left?"        -> "a red circle"
- describe: "Describe the image."             -> "a red circle in the top left and a blue square in the
                                                  bottom right"

``answer`` is the checker (ground truth from the scene); ``quality`` scores any free text in [0, 1];
``perturb`` makes wrong or partly right answers. Everything is a pure function of its arguments.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional, Union

import numpy as np
from PIL import Image, ImageDraw

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 200, 40),
}
KINDS = ("circle", "square", "triangle", "diamond")
CELLS = ("top left", "top right", "bottom left", "bottom right")
BACKGROUND = (255, 255, 255)
QUESTION_KINDS = ("colour", "shape", "count", "position", "describe")
MAX_SHAPES = len(CELLS)

# Shape geometry, as fractions of a cell's side: radius range and the largest centre offset.
_RADIUS = (0.28, 0.40)
_JITTER = 0.06


@dataclass(frozen=True)
class Shape:
    """One shape: its colour, kind and grid cell, plus a radius and centre offset (fractions of a cell)."""

    colour: str
    kind: str
    cell: str
    radius: float = 0.34
    dx: float = 0.0
    dy: float = 0.0


@dataclass(frozen=True)
class Scene:
    """A few shapes with distinct colours, kinds and cells."""

    shapes: tuple[Shape, ...]

    def at(self, cell: str) -> Optional[Shape]:
        """The shape in ``cell``, or None."""
        return next((s for s in self.shapes if s.cell == cell), None)


@dataclass(frozen=True)
class Question:
    """A question kind and its target (a kind, colour or cell; None for count and describe)."""

    kind: str
    target: Optional[str] = None

    @property
    def text(self) -> str:
        return {
            "colour": f"What colour is the {self.target}?",
            "shape": f"What shape is {self.target}?",
            "count": "How many shapes are there?",
            "position": f"What is in the {self.target}?",
            "describe": "Describe the image.",
        }[self.kind]


def sample_scene(rng: np.random.Generator, max_shapes: int = 3) -> Scene:
    """1 to ``max_shapes`` shapes; colours, kinds and cells drawn without replacement."""
    if not 1 <= max_shapes <= MAX_SHAPES:
        raise ValueError(f"max_shapes must be in [1, {MAX_SHAPES}], got {max_shapes}")
    n = int(rng.integers(1, max_shapes + 1))
    colours = rng.permutation(list(COLOURS))[:n]
    kinds = rng.permutation(list(KINDS))[:n]
    cells = sorted(rng.permutation(len(CELLS))[:n])  # shapes listed in reading order
    shapes = []
    for colour, kind, cell in zip(colours, kinds, cells):
        radius, dx, dy = rng.uniform(*_RADIUS), rng.uniform(-_JITTER, _JITTER), rng.uniform(-_JITTER, _JITTER)
        shapes.append(Shape(str(colour), str(kind), CELLS[cell], round(radius, 3), round(dx, 3), round(dy, 3)))
    return Scene(tuple(shapes))


def cell_box(cell: str, size: int) -> tuple[float, float, float]:
    """Centre x, centre y and side of ``cell`` in an image ``size`` pixels wide."""
    row, col = divmod(CELLS.index(cell), 2)
    side = size / 2
    return (col + 0.5) * side, (row + 0.5) * side, side


def render(scene: Scene, size: int = 112) -> Image.Image:
    """An RGB image, plain background, each shape filled in its cell (no antialiasing: exact colours)."""
    image = Image.new("RGB", (size, size), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for s in scene.shapes:
        cx, cy, side = cell_box(s.cell, size)
        cx, cy, r = cx + s.dx * side, cy + s.dy * side, s.radius * side
        fill = COLOURS[s.colour]
        if s.kind == "circle":
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
        elif s.kind == "square":
            draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=fill)
        elif s.kind == "triangle":
            draw.polygon([(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)], fill=fill)
        elif s.kind == "diamond":
            draw.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=fill)
        else:
            raise ValueError(f"unknown shape kind {s.kind!r}")
    return image


def sample_question(rng: np.random.Generator, scene: Scene, kinds: tuple[str, ...] = QUESTION_KINDS) -> Question:
    """A question of one of ``kinds`` about a random shape of ``scene``."""
    kind = str(kinds[int(rng.integers(len(kinds)))])
    shape = scene.shapes[int(rng.integers(len(scene.shapes)))]
    target = {"colour": shape.kind, "shape": shape.colour, "position": shape.cell}.get(kind)
    return Question(kind, target)


_QUESTION_PATTERNS = [
    (re.compile(r"what colou?r is the (\w+)\??"), "colour"),
    (re.compile(r"what shape is (\w+)\??"), "shape"),
    (re.compile(r"how many shapes are there\??"), "count"),
    (re.compile(r"what is in the (\w+ \w+)\??"), "position"),
    (re.compile(r"describe the image\.?"), "describe"),
]


def parse_question(text: str) -> Question:
    """The ``Question`` whose text is ``text``; ValueError for anything else."""
    norm = " ".join(text.lower().split())
    for pattern, kind in _QUESTION_PATTERNS:
        match = pattern.fullmatch(norm)
        if match:
            return Question(kind, match.group(1) if match.groups() else None)
    raise ValueError(f"not a synthetic question: {text!r}")


def _as_question(question: Union[Question, str]) -> Question:
    return question if isinstance(question, Question) else parse_question(question)


def _find(scene: Scene, question: Question) -> Shape:
    field = {"colour": "kind", "shape": "colour", "position": "cell"}[question.kind]
    for s in scene.shapes:
        if getattr(s, field) == question.target:
            return s
    raise ValueError(f"no shape in the scene answers {question.text!r}")


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def noun_phrase(colour: Optional[str], kind: str) -> str:
    """'a red circle', 'a circle' (no colour), 'an ...' before a vowel."""
    words = f"{colour} {kind}" if colour else kind
    return f"{article(words)} {words}"


def describe(shapes: tuple[Shape, ...]) -> str:
    """'a red circle in the top left, a blue square in the top right and a green diamond in the ...'."""
    parts = [f"{noun_phrase(s.colour, s.kind)} in the {s.cell}" for s in shapes]
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def answer(scene: Scene, question: Union[Question, str]) -> str:
    """The right answer, recomputed from the scene (the checker)."""
    q = _as_question(question)
    if q.kind == "count":
        return str(len(scene.shapes))
    if q.kind == "describe":
        return describe(scene.shapes)
    s = _find(scene, q)
    return {"colour": s.colour, "shape": noun_phrase(None, s.kind), "position": noun_phrase(s.colour, s.kind)}[q.kind]


# ---- quality of free text --------------------------------------------------------------------------

_NUMBERS = {w: i for i, w in enumerate(("zero", "one", "two", "three", "four", "five", "six"))}


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z]+|\d+", text.lower())


def _mentions(words: list[str]) -> list[tuple[Optional[str], str, Optional[str]]]:
    """(colour or None, kind, cell or None) for every shape named in a description."""
    found = []
    kind_at = [i for i, w in enumerate(words) if w in KINDS]
    for n, i in enumerate(kind_at):
        colour = words[i - 1] if i > 0 and words[i - 1] in COLOURS else None
        end = kind_at[n + 1] if n + 1 < len(kind_at) else len(words)
        cell = None
        for j in range(i + 1, end - 1):
            if f"{words[j]} {words[j + 1]}" in CELLS:
                cell = f"{words[j]} {words[j + 1]}"
                break
        found.append((colour, words[i], cell))
    return found


def _only(words: list[str], vocabulary) -> Optional[str]:
    """The single distinct word of ``vocabulary`` in ``words``, or None if none or several."""
    hits = {w for w in words if w in vocabulary}
    return hits.pop() if len(hits) == 1 else None


def quality(scene: Scene, question: Union[Question, str], text: str) -> float:
    """True quality of an answer in [0, 1]: 1 exactly when it is fully right.

    colour / shape: 1 if the answer names exactly the right colour / kind (and no other), else 0.
    count: 1 - |claimed - true| / true, clipped at 0 (0 without exactly one number).
    position: half for the right colour, half for the right kind.
    describe: each named shape is matched to the scene shape in its cell and earns half for the right
    colour and half for the right kind; a shape named in an empty cell, without a cell, or in a cell
    already named costs 1. The sum over the true count, clipped to [0, 1].
    """
    q = _as_question(question)
    words = _words(text)
    if q.kind == "count":
        numbers = [int(w) if w.isdigit() else _NUMBERS[w] for w in words if w.isdigit() or w in _NUMBERS]
        if len(numbers) != 1:
            return 0.0
        n = len(scene.shapes)
        return round(max(0.0, 1.0 - abs(numbers[0] - n) / n), 6)
    if q.kind == "describe":
        credit, claimed = 0.0, set()
        for colour, kind, cell in _mentions(words):
            shape = scene.at(cell) if cell else None
            if shape is None or cell in claimed:
                credit -= 1.0
                continue
            claimed.add(cell)
            credit += 0.5 * (colour == shape.colour) + 0.5 * (kind == shape.kind)
        return round(float(np.clip(credit / len(scene.shapes), 0.0, 1.0)), 6)
    s = _find(scene, q)
    colour, kind = _only(words, COLOURS), _only(words, KINDS)
    if q.kind == "colour":
        return float(colour == s.colour)
    if q.kind == "shape":
        return float(kind == s.kind)
    return 0.5 * (colour == s.colour) + 0.5 * (kind == s.kind)


# ---- wrong and partly right answers ----------------------------------------------------------------


def _other(rng: np.random.Generator, choices, exclude: str = "") -> str:
    """A random element of ``choices`` other than ``exclude``."""
    options = [c for c in choices if c != exclude]
    return str(options[int(rng.integers(len(options)))])


def _edit_description(rng: np.random.Generator, scene: Scene) -> tuple[Shape, ...]:
    """The scene's shapes with 1 to 3 random edits: recolour, reshape, drop, add, move."""
    shapes = list(scene.shapes)  # never emptied: "drop" needs two shapes
    for _ in range(int(rng.integers(1, 4))):
        empty = [c for c in CELLS if c not in {s.cell for s in shapes}]
        edits = ["recolour", "reshape"] + (["drop"] if len(shapes) > 1 else []) + (["add", "move"] if empty else [])
        edit = edits[int(rng.integers(len(edits)))]
        i = int(rng.integers(len(shapes)))
        if edit == "recolour":
            shapes[i] = Shape(_other(rng, COLOURS, shapes[i].colour), shapes[i].kind, shapes[i].cell)
        elif edit == "reshape":
            shapes[i] = Shape(shapes[i].colour, _other(rng, KINDS, shapes[i].kind), shapes[i].cell)
        elif edit == "drop":
            shapes.pop(i)
        elif edit == "add":
            cell = empty[int(rng.integers(len(empty)))]
            colour, kind = _other(rng, COLOURS), _other(rng, KINDS)
            shapes.append(Shape(colour, kind, cell))
        else:  # move
            shapes[i] = Shape(shapes[i].colour, shapes[i].kind, empty[int(rng.integers(len(empty)))])
    return tuple(sorted(shapes, key=lambda s: CELLS.index(s.cell)))


def perturb(rng: np.random.Generator, scene: Scene, question: Union[Question, str]) -> str:
    """An answer of quality < 1: a wrong value, or a description with a few edits."""
    q = _as_question(question)
    for _ in range(100):
        if q.kind == "count":
            n = len(scene.shapes)
            text = str(_other(rng, [str(k) for k in range(max(0, n - 2), n + 3)], str(n)))
        elif q.kind == "describe":
            text = describe(_edit_description(rng, scene))
        else:
            s = _find(scene, q)
            if q.kind == "colour":
                text = _other(rng, COLOURS, s.colour)
            elif q.kind == "shape":
                text = noun_phrase(None, _other(rng, KINDS, s.kind))
            else:
                wrong = int(rng.integers(1, 4))  # 1: colour, 2: kind, 3: both wrong
                colour = _other(rng, COLOURS, s.colour) if wrong & 1 else s.colour
                kind = _other(rng, KINDS, s.kind) if wrong & 2 else s.kind
                text = noun_phrase(colour, kind)
        if quality(scene, q, text) < 1.0:
            return text
    raise RuntimeError(f"could not perturb the answer to {q.text!r}")  # unreachable in practice


def judge_scores(scene: Scene, question: Union[Question, str], response_1: str, response_2: str) -> tuple[int, int]:
    """An oracle judge: 1 + round(9 quality) for each response, integers 1-10.

    Qualities that differ differ by at least 1/8 (half a shape of at most four), more than 1/9, so
    the scores are strictly ordered whenever the qualities are.
    """
    q1, q2 = quality(scene, question, response_1), quality(scene, question, response_2)
    return 1 + round(9 * q1), 1 + round(9 * q2)
