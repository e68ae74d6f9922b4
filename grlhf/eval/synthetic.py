"""The evaluations' data on the synthetic world (held-out indices, so never trained on): preference pairs,
scored answer groups whose human score is the world's true quality on the 1-5 scale, and benchmark
prompts with the right answer as reference. The pipeline's report and the tests use them."""

from __future__ import annotations

from typing import Any

from grlhf.data.loaders import PreferencePair, Prompt
from grlhf.data.synthetic import SyntheticConfig, item_rng, preference_pair, rl_prompt, systematic_error, world
from grlhf.eval.commands import Dataset
from grlhf.eval.pointwise import ScoredGroup


def _info(kind: str, scfg: SyntheticConfig, start: int, count: int) -> dict[str, Any]:
    return {"path": f"synthetic:{kind}", "format": "synthetic", "hash": f"synthetic:seed={scfg.seed}",
            "start": start, "rows_used": count, "rows_read": count}


def synthetic_pairs(scfg: SyntheticConfig, start: int, count: int) -> Dataset:
    """Preference pairs ``start .. start + count`` (the training stage holds out the same range)."""
    records = []
    for index in range(start, start + count):
        item = preference_pair(scfg, index)
        better, worse = ((item["response_1"], item["response_2"]) if item["overall_response"] == 1
                         else (item["response_2"], item["response_1"]))
        records.append(PreferencePair(str(index), item["image"], item["question"], better, worse))
    return Dataset(records, _info("pairs", scfg, start, count))


def synthetic_scored_groups(scfg: SyntheticConfig, start: int, count: int, answers: int = 4) -> Dataset:
    """``count`` questions, each with the right answer and ``answers - 1`` perturbed ones in random order;
    the human score is ``1 + round(4 * true quality)`` (MLLM-as-a-Judge's 1-5 scale)."""
    groups = []
    for index in range(start, start + count):
        item = rl_prompt(scfg, index)
        scene, question = item["scene"], item["question"]
        rng = item_rng(scfg, "pointwise", index)
        texts = [world.answer(scene, question)] + [world.perturb(rng, scene, question) for _ in range(answers - 1)]
        texts = [texts[i] for i in rng.permutation(len(texts))]
        scores = [1.0 + round(4 * world.quality(scene, question, t)) for t in texts]
        groups.append(ScoredGroup(question, item["image"], texts, scores))
    return Dataset(groups, {**_info("scored", scfg, start, count), "answers": count * answers})


def synthetic_benchmark(scfg: SyntheticConfig, start: int, count: int) -> Dataset:
    """Prompts with the right answer as the reference and the question kind as the category."""
    records = []
    for index in range(start, start + count):
        item = rl_prompt(scfg, index)
        records.append(Prompt(str(index), item["image"], item["question"], ground_truth=item["answer"],
                              scene=item["scene"], category=item["kind"]))
    return Dataset(records, _info("prompts", scfg, start, count))


def synthetic_error_pairs(scfg: SyntheticConfig, start: int, count: int) -> Dataset:
    """Held-out prompts ``start .. start + count``, each as a pair of its right answer against the wrong one a
    ``policy_error_mode=systematic`` or ``derangement`` warm start gives for it. A judge wrong on such pairs in
    either order gives the policy's grouped comparisons no signal on those prompts: both orders are judged, and
    they cancel."""
    records = []
    for index in range(start, start + count):
        item = rl_prompt(scfg, index)
        wrong = systematic_error(scfg, item["scene"], world.parse_question(item["question"]))
        records.append(PreferencePair(str(index), item["image"], item["question"], item["answer"], wrong))
    return Dataset(records, _info("error_pairs", scfg, start, count))


__all__ = ["synthetic_benchmark", "synthetic_error_pairs", "synthetic_pairs", "synthetic_scored_groups"]
