"""The three evaluations end to end: load the data, run every model, compute the metrics, write
``<out>/results.json``, ``<out>/table.md`` and the plots. Called by ``python -m grlhf.eval`` and by the
pipeline's report; the arguments are explicit (no global config)."""

from __future__ import annotations

import gc
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from grlhf.config import ConfigError
from grlhf.eval.engines import EngineSpec, generator, is_reward_model, reward_model
from grlhf.eval.lengths import SkipCounts, engine_limit, engine_processor, groups_for_grm, groups_for_rm, \
    judged_rows, model_processor, pairs_for_grm, pairs_for_rm, prompts_for_policies, skipped_notes
from grlhf.eval.judge import grm_outcomes, judge_metrics, judge_table, rm_outcomes, split_metrics
from grlhf.eval.output import grouped_bars, write_results
from grlhf.eval.pointwise import anchored_scores, correlation_metrics, grouped_scores, rm_scores, table1
from grlhf.eval.policy import DEFAULT_SCORE_PATTERN, accuracy_by_answer, by_category, category_table, judge_against, \
    monitor_metrics, policy_answers, rubric_scores, table2, win_metrics
from grlhf.eval.stats import mean_interval
from grlhf.reward.judge import GroupJudge
from grlhf.reward.monitors import SELF_PRAISE_PHRASES


@dataclass
class Dataset:
    """Loaded records with what results.json says about them (path, format, content hash, row counts)."""

    records: Sequence[Any]
    info: dict[str, Any]


@dataclass
class JudgeSettings:
    """How a GRM judges: prompt template text, generation budget, batching, the bootstrap, and the longest
    prompt taken (``max_prompt_length``; None: what the engine's longest sequence leaves, ``eval.lengths``)."""

    template: str
    max_tokens: int = 512
    max_prompt_length: Optional[int] = None
    batch_size: int = 32
    principles: bool = False
    stop_token_ids: tuple[int, ...] = ()
    resamples: int = 1000
    seed: int = 0


@dataclass
class PolicySettings:
    """How policies answer and are judged: ``opponent`` is ``reference`` or a policy's name; ``rubric`` (a
    template text) switches to point-wise scoring with ``score_pattern``. ``max_prompt_length``: the longest
    policy prompt taken (None: what the engine's longest sequence leaves after ``max_tokens``)."""

    max_tokens: int = 512
    max_prompt_length: Optional[int] = None
    batch_size: int = 32
    opponent: str = "reference"
    rubric: Optional[str] = None
    score_pattern: str = DEFAULT_SCORE_PATTERN
    self_praise_phrases: tuple[str, ...] = SELF_PRAISE_PHRASES
    stop_token_ids: tuple[int, ...] = ()


def _collect() -> None:
    """Free a dropped model before the next one loads (each judge or policy is held alone)."""
    gc.collect()


def _envelope(command: str, config: dict[str, Any], models: dict[str, str], datasets: dict[str, Dataset],
              began: float, skipped: dict[str, dict[str, SkipCounts]]) -> dict[str, Any]:
    """The record of a run; each dataset's info gains ``skipped_too_long``: {model or stage: {reason: items}}."""
    return {"command": command, "config": config, "models": models,
            "datasets": {name: {**d.info, "skipped_too_long": skipped.get(name, {})} for name, d in datasets.items()},
            "time_s": time.perf_counter() - began}


def group_judge(engine, settings: JudgeSettings) -> GroupJudge:
    """A greedy, both-orders group judge on ``engine`` with ``settings``' template and budget."""
    return GroupJudge(engine, template=settings.template, both_orders=True, samples=1,
                      max_tokens=settings.max_tokens, max_batch=settings.batch_size, seed=settings.seed)


def run_judge(out: Path, judges: dict[str, str], sets: dict[str, Dataset], spec: EngineSpec,
              settings: JudgeSettings, config: Optional[dict] = None,
              split: Optional[dict[str, Callable[[Any], str]]] = None) -> dict[str, Any]:
    """Every judge on every preference set: one table, one grouped bar chart (the paper's Figure 5).

    ``split``: for the sets it names, also a row per key of their pairs (``"<set>: <key>"``), judged in the
    set's own batches (a separate set per key would compile programs for its batch sizes)."""
    began, results = time.perf_counter(), {}
    skipped: dict[str, dict[str, SkipCounts]] = {s: {} for s in sets}
    split = split or {}

    def record(name: str, set_name: str, pairs: Sequence, outcomes, kind: str) -> None:
        bootstrap = dict(resamples=settings.resamples, seed=settings.seed)
        results[name][set_name] = {**judge_metrics(outcomes, **bootstrap), "kind": kind}
        if set_name in split:
            keys = [split[set_name](p) for p in pairs]
            for key, metrics in split_metrics(outcomes, keys, **bootstrap).items():
                results[name][f"{set_name}: {key}"] = {**metrics, "kind": kind}
    for name, model in judges.items():
        results[name] = {}
        if is_reward_model(model):
            rm, processor = reward_model(model, spec)
            limit = engine_limit(spec, 0, settings.max_prompt_length)
            for set_name, data in sets.items():
                pairs, skipped[set_name][name] = pairs_for_rm(data.records, processor, limit)
                outcomes = rm_outcomes(rm, processor, pairs, length_buckets=spec.length_buckets,
                                       batch_size=settings.batch_size)
                record(name, set_name, pairs, outcomes, "rm")
            del rm
            _collect()
            continue
        engine = generator(model, spec)
        limit = engine_limit(spec, settings.max_tokens, settings.max_prompt_length)
        for set_name, data in sets.items():
            pairs, skipped[set_name][name] = pairs_for_grm(data.records, engine_processor(engine), limit,
                                                           template=settings.template, principles=settings.principles)
            outcomes = grm_outcomes(engine, pairs, template=settings.template, max_tokens=settings.max_tokens,
                                    batch_size=settings.batch_size, principles=settings.principles,
                                    stop_token_ids=settings.stop_token_ids)
            record(name, set_name, pairs, outcomes, "grm")
        del engine
        _collect()
    table = judge_table(results)
    groups = list(sets)
    grouped_bars(out / "accuracy.png", "pairwise accuracy (both orders)", groups,
                 {j: [results[j][s]["accuracy"] for s in groups] for j in results},
                 {j: [tuple(results[j][s]["accuracy_ci"]) for s in groups] for j in results}, ylabel="accuracy")
    payload = {**_envelope("judge", {**(config or {}), "settings": asdict(settings), "engine": spec.describe()},
                           judges, sets, began, skipped), "results": results}
    write_results(out, payload, "\n".join([table, *skipped_notes(payload["datasets"])]))
    return payload


def run_pointwise(out: Path, judges: dict[str, str], data: Dataset, spec: EngineSpec, settings: JudgeSettings,
                  config: Optional[dict] = None) -> dict[str, Any]:
    """Table 1: every judge's correlation with the human scores, with and without grouped comparison."""
    began, results, skipped = time.perf_counter(), {}, {}
    kw = {"resamples": settings.resamples, "seed": settings.seed}
    for name, model in judges.items():
        if is_reward_model(model):
            rm, processor = reward_model(model, spec)
            limit = engine_limit(spec, 0, settings.max_prompt_length)
            groups, skipped[name] = groups_for_rm(data.records, processor, limit)
            predicted = rm_scores(rm, processor, groups, length_buckets=spec.length_buckets,
                                  batch_size=settings.batch_size)
            results[name] = {"score": correlation_metrics(groups, predicted, **kw)}
            del rm
            _collect()
            continue
        engine = generator(model, spec)
        judge = group_judge(engine, settings)
        groups, skipped[name] = groups_for_grm(data.records, engine_processor(engine), engine_limit(
            spec, settings.max_tokens, settings.max_prompt_length), judge)
        results[name] = {"grouped": correlation_metrics(groups, grouped_scores(judge, groups), **kw),
                         "anchored": correlation_metrics(groups, anchored_scores(judge, groups), **kw)}
        del engine, judge
        _collect()
    payload = {**_envelope("pointwise", {**(config or {}), "settings": asdict(settings), "engine": spec.describe()},
                           judges, {"scores": data}, began, {"scores": skipped}), "results": results}
    write_results(out, payload, "\n".join([table1(results), *skipped_notes(payload["datasets"])]))
    return payload


def _pairwise(judge: GroupJudge, prompts, answers, opponents, settings: PolicySettings, resamples: int,
              seed: int) -> dict[str, Any]:
    outcome = judge_against(judge, prompts, answers, opponents)
    margin = outcome.margin
    own = np.where(outcome.valid, outcome.policy, np.nan)
    mean_own = np.array([np.nanmean(r) if np.isfinite(r).any() else np.nan for r in own])
    first = np.concatenate([outcome.policy[outcome.valid[:, 0], 0], outcome.opponent[outcome.valid[:, 1], 1]])
    second = np.concatenate([outcome.opponent[outcome.valid[:, 0], 0], outcome.policy[outcome.valid[:, 1], 1]])
    metrics = {**win_metrics(margin, resamples=resamples, seed=seed),
               **monitor_metrics(answers, mean_own, first, second, settings.self_praise_phrases)}
    metrics["categories"] = {c: win_metrics(m, resamples=0) for c, m in by_category(prompts, margin).items()}
    return metrics


def _rubric(engine, prompts, answers, settings: PolicySettings, judge_settings: JudgeSettings) -> dict[str, Any]:
    scores = rubric_scores(engine, prompts, answers, template=settings.rubric, pattern=settings.score_pattern,
                           max_tokens=judge_settings.max_tokens, batch_size=judge_settings.batch_size)
    finite = scores[np.isfinite(scores)]
    metrics = {"prompts": len(prompts), "scored": int(finite.size), "failures": int(scores.size - finite.size),
               "score": float(finite.mean()) if finite.size else float("nan"),
               "score_ci": list(mean_interval(finite, resamples=judge_settings.resamples, seed=judge_settings.seed)),
               **monitor_metrics(answers, scores, phrases=settings.self_praise_phrases)}
    metrics["categories"] = {c: {"score": float(np.nanmean(v)) if np.isfinite(v).any() else float("nan")}
                             for c, v in by_category(prompts, scores).items()}
    return metrics


def _opponents(bench: str, prompts, answers: dict[str, list[str]], settings: PolicySettings) -> list[str]:
    """What each answer is judged against: the row's reference answer or the baseline policy's answer."""
    if settings.opponent != "reference":
        return answers[settings.opponent]
    missing = sum(p.ground_truth is None for p in prompts)
    if missing:
        raise ConfigError(f"benchmark {bench}: {missing} prompt(s) have no reference answer; map the "
                         "reference column or judge against a baseline policy")
    return [p.ground_truth for p in prompts]


def _none_judged(key: str) -> dict[str, Any]:
    """The result of a policy none of whose judge prompts fit (every row skipped as too long)."""
    nan = float("nan")
    return {"prompts": 0, "judged": 0, "failures": 0, "win": nan, "tie": nan, "loss": nan, key: nan,
            f"{key}_ci": [nan, nan], "categories": {},
            "self_praise_rate": nan, "length_score_correlation": nan, "judge_position_bias": nan, "answer_words": nan}


def run_policy(out: Path, policies: dict[str, str], benchmarks: dict[str, Dataset], policy_spec: EngineSpec,
               judge_model: str, judge_spec: EngineSpec, judge_settings: JudgeSettings, settings: PolicySettings,
               config: Optional[dict] = None) -> dict[str, Any]:
    """Answers of every policy on every benchmark, then judged; per-category tables and the Table 2 shape."""
    began = time.perf_counter()
    if settings.opponent != "reference" and settings.opponent not in policies:
        raise ConfigError(f"opponent {settings.opponent!r} is neither 'reference' nor one of the policies "
                         f"{sorted(policies)}")
    # every policy answers the same prompts: those that fit them all
    limit = engine_limit(policy_spec, settings.max_tokens, settings.max_prompt_length)
    processors = [model_processor(model, policy_spec) for model in policies.values()]
    shown: dict[str, list] = {}
    skipped: dict[str, dict[str, SkipCounts]] = {b: {} for b in benchmarks}
    for bench, data in benchmarks.items():
        shown[bench], skipped[bench]["policies"] = prompts_for_policies(data.records, processors, limit)
    del processors
    answers: dict[str, dict[str, list[str]]] = {b: {} for b in benchmarks}
    for name, model in policies.items():
        engine = generator(model, policy_spec)
        for bench in benchmarks:
            answers[bench][name] = policy_answers(engine, shown[bench], max_tokens=settings.max_tokens,
                                                  batch_size=settings.batch_size, stop_token_ids=settings.stop_token_ids)
        del engine
        _collect()
    engine = generator(judge_model, judge_spec)
    judge = group_judge(engine, judge_settings)
    judge_limit = engine_limit(judge_spec, judge_settings.max_tokens, judge_settings.max_prompt_length)
    results: dict[str, dict[str, Any]] = {b: {} for b in benchmarks}
    for bench in benchmarks:
        prompts = shown[bench]
        for name in policies:
            if settings.opponent == name and settings.rubric is None:
                continue
            opponents = None if settings.rubric is not None else _opponents(bench, prompts, answers[bench], settings)
            rows, skipped[bench][f"judge of {name}"] = judged_rows(
                prompts, answers[bench][name], opponents, engine_processor(engine), judge_limit, judge=judge,
                rubric=settings.rubric)
            take = lambda values: [values[i] for i in rows]  # noqa: E731
            if not rows:
                results[bench][name] = _none_judged("score" if settings.rubric is not None else "win_rate")
            elif settings.rubric is not None:
                results[bench][name] = _rubric(engine, take(prompts), take(answers[bench][name]), settings,
                                               judge_settings)
            else:
                results[bench][name] = _pairwise(judge, take(prompts), take(answers[bench][name]), take(opponents),
                                                 settings, judge_settings.resamples, judge_settings.seed)
        for name, r in results[bench].items():
            truth = [p.true_quality(a) for p, a in zip(prompts, answers[bench][name])]
            if truth and None not in truth:  # the synthetic world knows each answer's quality
                right = [q == 1.0 for q in truth]
                r["true_accuracy"] = float(np.mean(right))
                r["true_accuracy_by_answer"] = accuracy_by_answer(prompts, right)
    del engine, judge
    _collect()
    key = "score" if settings.rubric is not None else "win_rate"
    sections = ["## Table 2 shape (" + ("rubric score" if key == "score" else
                                        f"win rate against {settings.opponent}") + ")", "", table2(results, key)]
    for bench, rows in results.items():
        if any(r.get("categories") for r in rows.values()):
            sections += ["", f"## {bench}: by category", "", category_table(rows, key)]
    monitors = ["self_praise_rate", "length_score_correlation", "judge_position_bias", "answer_words"]
    sections += ["", "## Reward-hacking monitors", "",
                 "| benchmark | policy | " + " | ".join(monitors) + " |", "|---|---|" + "---|" * len(monitors)]
    sections += [f"| {b} | {p} | " + " | ".join(f"{r[m]:.3f}" for m in monitors) + " |"
                 for b, rows in results.items() for p, r in rows.items()]
    samples = {b: {p: a[:5] for p, a in per.items()} for b, per in answers.items()}
    payload = {**_envelope("policy", {**(config or {}), "judge_settings": asdict(judge_settings),
                                      "settings": asdict(settings), "policy_engine": policy_spec.describe(),
                                      "judge_engine": judge_spec.describe()},
                           {**policies, "judge": judge_model}, benchmarks, began, skipped),
               "results": results, "sample_answers": samples}
    write_results(out, payload, "\n".join([*sections, *skipped_notes(payload["datasets"])]))
    return payload


__all__ = ["Dataset", "JudgeSettings", "PolicySettings", "group_judge", "run_judge", "run_pointwise",
           "run_policy"]
