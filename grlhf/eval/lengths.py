"""The evaluations' length rule: items whose prompts cannot run on the engine are skipped and counted, never
a crash (``batching.pick_bucket`` raises on an over-long row mid-run).

The rule is training's (``grlhf.data.lengths.LengthLimit``, as ``trainer.datasets.length_limit`` builds it):
a prompt of more than ``max_prompt_length`` tokens (default: no limit but the engine's), or one leaving fewer
than the generation budget (``reserve``) of the engine's longest sequence (the largest length bucket; vLLM:
``max_model_len``), is skipped as ``prompt_too_long``; prompt + a scored answer over the longest sequence (the
score-only RM) as ``sequence_too_long``. An item (a pair in both orders, a question's group of answers, a
benchmark prompt) counts once, by its first failing prompt. A remote endpoint has no local processor to measure
with: its items are all kept and the count is ``None`` (not measured).
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Callable, Optional, Sequence, TypeVar

from grlhf.data.conversations import prompt_conversation
from grlhf.data.lengths import LengthLimit, fitting
from grlhf.data.loaders import LoadReport, PreferencePair, Prompt
from grlhf.data.processor import load_processor
from grlhf.eval.engines import EngineSpec
from grlhf.eval.pointwise import ScoredGroup
from grlhf.eval.policy import rubric_messages
from grlhf.reward.judge import Group, GroupJudge
from grlhf.reward.verdicts import judge_conversation
from grlhf.tiny import resolve_model_path

T = TypeVar("T")

SkipCounts = Optional[dict[str, int]]  # reason -> items skipped; None: not measured (remote)


def engine_limit(spec: EngineSpec, reserve: int, max_prompt_length: Optional[int] = None) -> LengthLimit:
    """The rule for prompts run on ``spec``'s engine with ``reserve`` tokens generated (0: scored, not sampled)."""
    longest = spec.max_model_len if spec.backend == "vllm" else max(spec.length_buckets)
    return LengthLimit(longest if max_prompt_length is None else max_prompt_length, longest, reserve)


def model_processor(model: str, spec: EngineSpec) -> Any:
    """The processor that measures ``model``'s prompts; None for a remote endpoint (a served name, no files)."""
    return None if spec.backend == "remote" else load_processor(resolve_model_path(model))


def engine_processor(engine: Any) -> Any:
    """The processor a local engine (JAX sampler, vLLM) encodes with; None for a remote endpoint."""
    return getattr(engine, "processor", None)


def fit(items: Sequence[T], processor: Any, limit: LengthLimit, conversations: Callable[[T], Sequence[list]],
        responses: Optional[Callable[[T], Sequence[str]]] = None) -> tuple[list[T], SkipCounts]:
    """``(the items that fit, skips by reason)``; with no processor all items and ``None``."""
    items = list(items)
    if processor is None:
        return items, None
    report = LoadReport("eval")
    kept = fitting(processor, items, limit, conversations, responses, report)
    return kept, dict(sorted(report.reason_counts.items()))


def pairs_for_grm(pairs: Sequence[PreferencePair], processor: Any, limit: LengthLimit, *, template: str,
                  principles: bool) -> tuple[list[PreferencePair], SkipCounts]:
    """Pairs whose judge prompt fits in both orders."""
    return fit(pairs, processor, limit, lambda p: [judge_conversation(p, swap, template=template, principles=principles)
                                                   for swap in (False, True)])


def _alone(question: str, image: Any) -> list[dict]:
    return prompt_conversation(question, image, decode=False)


def pairs_for_rm(pairs: Sequence[PreferencePair], processor: Any, limit: LengthLimit
                 ) -> tuple[list[PreferencePair], SkipCounts]:
    """Pairs whose prompt + answer fits for both answers (the score-only RM scores each alone)."""
    return fit(pairs, processor, limit, lambda p: [_alone(p.question, p.image)] * 2, lambda p: [p.chosen, p.rejected])


def groups_for_grm(groups: Sequence[ScoredGroup], processor: Any, limit: LengthLimit, judge: GroupJudge
                   ) -> tuple[list[ScoredGroup], SkipCounts]:
    """Questions all of whose judge prompts fit: every ordered pair of its answers and its reference anchor."""
    def conversations(g: ScoredGroup) -> list[list]:
        answers = list(g.answers) + ([g.reference] if g.reference is not None else [])
        jobs = [(0, i, j) for i in range(len(answers)) for j in range(len(answers)) if i != j]
        return judge.requests([Group(g.question, g.image, answers)], jobs)
    return fit(groups, processor, limit, conversations)


def groups_for_rm(groups: Sequence[ScoredGroup], processor: Any, limit: LengthLimit
                  ) -> tuple[list[ScoredGroup], SkipCounts]:
    """Questions each of whose answers fits after the prompt."""
    return fit(groups, processor, limit, lambda g: [_alone(g.question, g.image)] * len(g.answers),
               lambda g: list(g.answers))


def prompts_for_policies(prompts: Sequence[Prompt], processors: Sequence[Any], limit: LengthLimit
                         ) -> tuple[list[Prompt], SkipCounts]:
    """Prompts that fit every policy (so every policy answers the same prompts); counted by the first policy
    that cannot take a prompt. ``None`` only when no policy could be measured."""
    kept, counts = list(prompts), None
    for processor in processors:
        kept, skipped = fit(kept, processor, limit, lambda p: [_alone(p.question, p.image)])
        if skipped is not None:
            counts = (counts or Counter()) + Counter(skipped)
    return kept, None if counts is None else dict(sorted(counts.items()))


def judged_rows(prompts: Sequence[Prompt], answers: Sequence[str], opponents: Optional[Sequence[str]],
                processor: Any, limit: LengthLimit, *, judge: Optional[GroupJudge] = None,
                rubric: Optional[str] = None) -> tuple[list[int], SkipCounts]:
    """Indices of the prompts whose judge prompts fit: the answer against its opponent in both orders
    (``judge``), or the rubric prompt of the answer (``rubric``)."""
    def conversations(i: int) -> list[list]:
        p = prompts[i]
        if rubric is not None:
            return [rubric_messages(rubric, p.question, answers[i], p.ground_truth, p.image)]
        return judge.requests([Group(p.question, p.image, [answers[i], opponents[i]])], [(0, 0, 1), (0, 1, 0)])
    return fit(range(len(prompts)), processor, limit, conversations)


def skipped_notes(datasets: dict[str, dict[str, Any]]) -> list[str]:
    """Markdown lines naming the items each dataset lost to the length rule (``skipped_too_long`` of its info)."""
    lines = []
    for name, info in datasets.items():
        for who, counts in info.get("skipped_too_long", {}).items():
            if counts is None:
                lines.append(f"- {name}, {who}: lengths not measured (remote endpoint)")
            elif counts:
                reasons = ", ".join(f"{reason} {count}" for reason, count in counts.items())
                lines.append(f"- {name}, {who}: {sum(counts.values())} skipped as too long ({reasons})")
    if not lines:
        return []
    return ["", "Skipped, too long for the engine (`grlhf.eval.lengths`):", "", *lines]


__all__ = ["SkipCounts", "engine_limit", "engine_processor", "fit", "groups_for_grm", "groups_for_rm", "judged_rows",
           "model_processor", "pairs_for_grm", "pairs_for_rm", "prompts_for_policies", "skipped_notes"]
