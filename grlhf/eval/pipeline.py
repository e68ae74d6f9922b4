"""The embedded pipeline's evaluation for ``report.md``, on held-out synthetic data: the judge table (GRM
warm start vs GRM+RL; the pipeline trains no score-only RM), the point-wise correlation with and without
grouped comparison (human score = the world's true quality), and the policy table (warm start vs RL,
judged by the GRM+RL against the world's right answer, with the true accuracy beside it)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from grlhf.data.synthetic import SyntheticConfig
from grlhf.eval.commands import JudgeSettings, PolicySettings, run_judge, run_pointwise, run_policy
from grlhf.eval.engines import EngineSpec
from grlhf.eval.output import fmt
from grlhf.eval.synthetic import synthetic_benchmark, synthetic_error_pairs, synthetic_pairs, synthetic_scored_groups


ERRORS = "policy warm-start errors"  # the right answer against the warm start's systematic (or deranged) wrong one
MAX_ERROR_ROWS = 8  # a row per (right, wrong) answer up to this many (the colour toy has four)


def error_row(pair) -> str:
    """The row of the errors' set a pair falls in: ``"right > wrong"``."""
    return f"{pair.chosen} > {pair.rejected}"


@dataclass(frozen=True)
class PipelineEval:
    """What to evaluate: the held-out ranges of each stage's synthetic data and the judge's budget."""

    grm_world: SyntheticConfig
    policy_world: SyntheticConfig
    pairs_start: int  # the GRM stage's held-out pairs: [pairs_start, pairs_start + pairs)
    pairs: int
    prompts_start: int  # the policy stage's held-out prompts
    prompts: int
    scored_questions: int  # point-wise: questions of 4 answers each (after the held-out prompts)
    template: str
    judge_max_tokens: int
    answer_max_tokens: int
    length_buckets: tuple[int, ...]
    batch_size: int = 64
    resamples: int = 1000


def evaluate_pipeline(out: Path, judges: dict[str, str], policies: dict[str, str], plan: PipelineEval
                      ) -> dict[str, Any]:
    """Run the three evaluations into ``out/{judge,pointwise,policy}``; the report's sections and timings."""
    spec = EngineSpec(length_buckets=plan.length_buckets)
    settings = JudgeSettings(template=plan.template, max_tokens=plan.judge_max_tokens, batch_size=plan.batch_size,
                             resamples=plan.resamples)
    timings, began = {}, time.perf_counter()
    sets, split = {"held-out pairs": synthetic_pairs(plan.grm_world, plan.pairs_start, plan.pairs)}, {}
    if plan.policy_world.policy_error_mode != "random":  # where the GRMs can and cannot guide the policy
        sets[ERRORS] = synthetic_error_pairs(plan.policy_world, plan.prompts_start, plan.prompts)
        if len({error_row(p) for p in sets[ERRORS].records}) <= MAX_ERROR_ROWS:
            split[ERRORS] = error_row
    judged = run_judge(out / "judge", judges, sets, spec, settings, split=split)
    timings["judge_s"] = time.perf_counter() - began
    scored = synthetic_scored_groups(plan.policy_world, plan.prompts_start + plan.prompts, plan.scored_questions)
    pointwise = run_pointwise(out / "pointwise", judges, scored, spec, settings)
    timings["pointwise_s"] = time.perf_counter() - began - timings["judge_s"]
    bench = synthetic_benchmark(plan.policy_world, plan.prompts_start, plan.prompts)
    final_judge = list(judges.values())[-1]
    policy = run_policy(out / "policy", policies, {"held-out prompts": bench}, spec, final_judge, spec, settings,
                        PolicySettings(max_tokens=plan.answer_max_tokens, batch_size=plan.batch_size))
    timings["policy_s"] = time.perf_counter() - began - timings["judge_s"] - timings["pointwise_s"]
    return {"judge": judged, "pointwise": pointwise, "policy": policy, "timings": timings,
            "sections": report_sections(out, policies, policy, error_set=ERRORS in sets)}


def report_sections(out: Path, policies: dict[str, str], policy: dict, error_set: bool = False) -> list[str]:
    """Markdown for report.md: the three tables with one line on what each measures (``error_set``: the judge
    table has the policy warm-start errors' set)."""
    errors = (f" The set `{ERRORS}` pairs each of the policy's held-out prompts' right answer with the wrong one the "
              f"policy's warm start gives for it (with a row per `right > wrong`, up to {MAX_ERROR_ROWS}): the "
              "policy's RL judges both orders, so a judge wrong in either order there gives those prompts no "
              "signal.") if error_set else ""
    lines = ["## Judges on held-out pairs (both orders; 95% bootstrap intervals)", "",
             "The pipeline trains no score-only RM (`trainer.stage=rm` does; `python -m grlhf.eval judge` takes its "
             f"export beside the GRMs).{errors}", "", (out / "judge" / "table.md").read_text().strip(), "",
             "## Point-wise scoring (Table 1 shape): Pearson r with the true quality on the 1-5 scale", "",
             (out / "pointwise" / "table.md").read_text().strip(), "",
             "## Policies judged by the GRM+RL against the right answer (win rate, ties half)", ""]
    rows = ["| policy | win rate | win / tie / loss | judge failures | true accuracy | self-praise | "
            "length-score r | judge position bias |", "|---|---|---|---|---|---|---|---|"]
    by_answer = []
    for name in policies:
        r = policy["results"]["held-out prompts"][name]
        rows.append(f"| {name} | {fmt(r['win_rate'], r['win_rate_ci'])} | {r['win']:.2f} / {r['tie']:.2f} / "
                    f"{r['loss']:.2f} | {r['failures']} | {fmt(r.get('true_accuracy'))} | "
                    f"{r['self_praise_rate']:.3f} | {r['length_score_correlation']:.3f} | "
                    f"{r['judge_position_bias']:.3f} |")
        if r.get("true_accuracy_by_answer"):
            answers = r["true_accuracy_by_answer"].items()
            by_answer.append(f"- {name}: " + ", ".join(f"{a} {acc:.2f} ({count})" for a, (acc, count) in answers))
    if by_answer:
        rows += ["", "True accuracy by the right answer (held-out prompts per answer in brackets; greedy accuracy "
                 "moves in steps of whole answers):", "", *by_answer]
    return lines + rows


__all__ = ["PipelineEval", "evaluate_pipeline", "report_sections"]
