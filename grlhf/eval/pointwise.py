"""``grlhf.eval pointwise``: the MLLM-as-a-Judge score task (the paper's Table 1).

Answers scored 1-5 by people are grouped by question (same question text and image). A GRM gives each
answer S(y_i) two ways: by **grouped comparison** (every ordered pair of the question's answers judged,
``S`` as in training) and, the ablation, by **one comparison against a fixed anchor** (the row's
reference answer when the file has one, else the question's first answer; both orders, the answer's two
scores averaged; the anchor itself gets no score). The score-only RM scores each answer alone. Pearson and
Spearman r with the human scores, with bootstrap intervals over questions. An answer no judgment of
which parsed is left out and counted.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np

from grlhf.data.conversations import as_pil, prompt_conversation
from grlhf.data.loaders import ScoredAnswer
from grlhf.eval.output import fmt, markdown_table
from grlhf.eval.stats import grouped_correlation_interval, pearson, spearman
from grlhf.reward.judge import Group, GroupJudge
from grlhf.reward.score_model import score_answers


@dataclass
class ScoredGroup:
    """One question's answers with their human scores; ``reference`` is the ablation's anchor when given."""

    question: str
    image: Any
    answers: list[str]
    scores: list[float]
    reference: Optional[str] = None


def _image_key(image: Any) -> str:
    data = getattr(image, "data", None)
    if data is not None:
        return hashlib.sha256(data).hexdigest()
    return str(getattr(image, "path", None) or id(image))


def group_answers(rows: Sequence[ScoredAnswer], references: Optional[dict[str, str]] = None) -> list[ScoredGroup]:
    """Rows grouped by (question, image), in first-seen order; ``references`` maps a row id to its reference."""
    groups: dict[tuple[str, str], ScoredGroup] = {}
    for row in rows:
        key = (row.question, _image_key(row.image))
        if key not in groups:
            groups[key] = ScoredGroup(row.question, row.image, [], [],
                                      (references or {}).get(row.id))
        groups[key].answers.append(row.answer)
        groups[key].scores.append(row.score)
    return list(groups.values())


def grouped_scores(judge: GroupJudge, groups: Sequence[ScoredGroup]) -> list[np.ndarray]:
    """S(y_i) by grouped comparison, one array per group; NaN where no judgment of the answer parsed. Groups
    are judged in batches of equal size (the group judge's shape); a group of one answer gets NaN."""
    out: list[Optional[np.ndarray]] = [None] * len(groups)
    for k in sorted({len(g.answers) for g in groups}):
        members = [i for i, g in enumerate(groups) if len(g.answers) == k]
        if k < 2:
            for i in members:
                out[i] = np.full(k, np.nan)
            continue
        result = judge([Group(groups[i].question, as_pil(groups[i].image), groups[i].answers) for i in members])
        judged = (result.pair_valid & result.requested).sum(axis=2) + (result.pair_valid & result.requested).sum(axis=1)
        for row, i in enumerate(members):
            out[i] = np.where(judged[row] > 0, result.scores[row], np.nan)
    return out  # type: ignore[return-value]


def anchored_scores(judge: GroupJudge, groups: Sequence[ScoredGroup]) -> list[np.ndarray]:
    """The ablation: each answer against the group's anchor, both orders, its two scores averaged (NaN for
    the anchor itself and where neither judgment parsed)."""
    pil = [as_pil(g.image) for g in groups]
    judged_groups, jobs, owners = [], [], []
    for gi, g in enumerate(groups):
        answers = list(g.answers) + [g.reference if g.reference is not None else g.answers[0]]
        anchor = len(answers) - 1
        judged_groups.append(Group(g.question, pil[gi], answers))
        for i in range(len(g.answers)):
            if g.reference is None and i == 0:
                continue
            jobs += [(gi, i, anchor), (gi, anchor, i)]
            owners += [(gi, i, 0), (gi, i, 1)]
    scores, valid, _ = judge.judge_pairs(judged_groups, jobs) if jobs else (np.zeros((0, 2)), np.zeros(0, bool), {})
    sums = [np.zeros(len(g.answers)) for g in groups]
    counts = [np.zeros(len(g.answers)) for g in groups]
    for (gi, i, slot), score, ok in zip(owners, scores, valid):
        if ok:
            sums[gi][i] += score[slot]
            counts[gi][i] += 1
    return [np.where(c > 0, s / np.maximum(c, 1), np.nan) for s, c in zip(sums, counts)]


def rm_scores(model, processor, groups: Sequence[ScoredGroup], *, length_buckets: Sequence[int],
              batch_size: int = 32) -> list[np.ndarray]:
    """The score-only RM's score of every answer."""
    if not groups:
        return []
    conversations = [prompt_conversation(g.question, g.image) for g in groups for _ in g.answers]
    flat = score_answers(model, processor, conversations, [a for g in groups for a in g.answers],
                         batch_size=batch_size, length_buckets=length_buckets)
    return list(np.split(flat.astype(np.float64), np.cumsum([len(g.answers) for g in groups])[:-1]))


def correlation_metrics(groups: Sequence[ScoredGroup], predicted: Sequence[np.ndarray], *, resamples: int = 1000,
                        seed: int = 0) -> dict[str, Any]:
    """Pearson and Spearman r of predicted scores with the human ones (intervals over questions)."""
    human = np.concatenate([np.asarray(g.scores, np.float64) for g in groups]) if groups else np.zeros(0)
    guess = np.concatenate(predicted) if groups else np.zeros(0)
    ids = np.concatenate([np.full(len(g.answers), i) for i, g in enumerate(groups)]) if groups else np.zeros(0, int)
    keep = np.isfinite(guess)
    x, y, ids = guess[keep], human[keep], ids[keep]
    out: dict[str, Any] = {"answers": int(human.size), "scored": int(keep.sum()), "unscored": int((~keep).sum()),
                           "questions": len(groups)}
    for name, correlation in (("pearson", pearson), ("spearman", spearman)):
        out[name] = correlation(x, y)
        out[f"{name}_ci"] = list(grouped_correlation_interval(correlation, x, y, ids, resamples=resamples, seed=seed))
    return out


def table1(results: dict[str, dict[str, Any]]) -> str:
    """The paper's Table 1: one row per judge; Pearson r with and without grouped comparison (and Spearman)."""
    header = ["model", "with grouped comparison (Pearson)", "without (Pearson)", "with (Spearman)",
              "without (Spearman)", "answers scored"]
    rows = []
    for judge, r in results.items():
        grouped, single = r.get("grouped"), r.get("anchored") or r.get("score")
        cell = lambda m, key: fmt(m[key], m[f"{key}_ci"]) if m else "n/a"  # noqa: E731
        rows.append([judge, cell(grouped, "pearson"), cell(single, "pearson"), cell(grouped, "spearman"),
                     cell(single, "spearman"), (single or grouped or {}).get("scored", 0)])
    return markdown_table(header, rows)


__all__ = ["ScoredGroup", "anchored_scores", "correlation_metrics", "group_answers", "grouped_scores",
           "rm_scores", "table1"]
