"""``report.md`` of a pipeline run: PNG plots of the metrics over steps and a table of before/after numbers."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from grlhf.reward.monitors import rising
from grlhf.trainer.distributed import is_main
from grlhf.trainer.metrics import METRICS_FILE, read_metrics

# (file name, title, [(sub-run, stage, metric, label)])
PLOTS = [
    ("reward.png", "reward (mean per step)", [("grm", "grm", "reward_mean", "GRM rule reward"),
                                               ("policy", "policy", "reward_mean", "policy reward S(y)")]),
    ("true_accuracy.png", "policy: true accuracy on held-out prompts",
     [("policy", "policy_sft_eval", "true_accuracy", "warm start"), ("policy", "policy_eval", "true_accuracy", "RL")]),
    ("grm_accuracy.png", "GRM: held-out pairwise accuracy",
     [("grm", "sft_eval", "accuracy", "warm start"), ("grm", "grm_eval", "accuracy", "RL")]),
    ("kl.png", "KL to the reference", [("grm", "grm", "kl", "GRM"), ("policy", "policy", "kl", "policy")]),
    ("length.png", "response length (tokens)", [("grm", "grm", "response_length", "GRM judgments"),
                                                ("policy", "policy", "response_length", "policy answers")]),
]


def _series(rows: list[dict], stage: str, metric: str) -> tuple[list[int], list[float]]:
    points = [(r["step"], r[metric]) for r in rows if r.get("stage") == stage and r.get(metric) is not None]
    return [p[0] for p in points], [p[1] for p in points]


def plot(path: Path, title: str, lines: list[tuple[str, list[int], list[float]]], xlabel: str = "step") -> bool:
    """One PNG with a line per series; False when there is nothing to draw."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines = [line for line in lines if line[1]]
    if not lines:
        return False
    figure, axis = plt.subplots(figsize=(6, 3.5))
    for label, steps, values in lines:
        axis.plot(steps, values, marker="o" if len(steps) < 20 else None, label=label)
    axis.set_title(title)
    axis.set_xlabel(xlabel)
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return True


def _first_last(rows: list[dict], stage: str, metric: str) -> tuple[Optional[float], Optional[float]]:
    _, values = _series(rows, stage, metric)
    return (values[0], values[-1]) if values else (None, None)


def _fmt(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value:.3f}"


# (metric of the policy stage, label, how much it may rise from the first third of training to the last)
MONITORS = [("self_praise_rate", "self-praise rate of sampled answers", 0.05),
            ("length_score_correlation", "answer length vs reward (Pearson r)", 0.2),
            ("judge_position_bias", "judge position bias (first - second score)", 0.5)]


def monitor_lines(rows: list[dict]) -> list[str]:
    """The reward-hacking monitors of the policy stage: first and last value, and a drift flag when the mean
    of the last third of steps exceeds that of the first third by more than the monitor's threshold (the
    position bias by its size)."""
    lines = ["| monitor | first step | last step | drift |", "|---|---|---|---|"]
    for metric, label, threshold in MONITORS:
        _, values = _series(rows, "policy", metric)
        if metric == "judge_position_bias":
            values = [abs(v) for v in values]
        drift = rising(values, threshold)
        first, last = (values[0], values[-1]) if values else (None, None)
        lines.append(f"| {label} | {_fmt(first)} | {_fmt(last)} | "
                     f"{f'**rising** (> {threshold} over the run)' if drift else 'no'} |")
    return lines


def write_report(root: Path, summary: dict[str, Any]) -> Path:
    """Plots from ``<root>/{grm,policy}/metrics.jsonl`` and ``<root>/report.md``."""
    root = Path(root)
    if not is_main():  # a multi-process run writes its report once
        return root / "report.md"
    rows = {name: read_metrics(root / name / METRICS_FILE) for name in ("grm", "policy")}
    drawn = []
    for file, title, specs in PLOTS:
        lines = [(label, *_series(rows[sub], stage, metric)) for sub, stage, metric, label in specs]
        if plot(root / file, title, lines):
            drawn.append((file, title))
    grm_eval, policy_eval = rows["grm"], rows["policy"]
    grm_before = _first_last(grm_eval, "sft_eval", "accuracy")[1]
    grm_after = _first_last(grm_eval, "grm_eval", "accuracy")[1]
    pol_init, pol_before = _first_last(policy_eval, "policy_sft_eval", "true_accuracy")
    pol_after = _first_last(policy_eval, "policy_eval", "true_accuracy")[1]
    pairs = _first_last(grm_eval, "grm_eval", "pairs")[1]
    prompts = _first_last(policy_eval, "policy_eval", "prompts")[1]
    table = [
        "| measure | warm start | after RL | change |", "|---|---|---|---|",
        f"| GRM held-out pairwise accuracy ({int(pairs or 0)} pairs x 2 orders) | {_fmt(grm_before)} | "
        f"{_fmt(grm_after)} | {_fmt(None if None in (grm_before, grm_after) else grm_after - grm_before)} |",
        f"| GRM position bias (acc. first - second) | {_fmt(_first_last(grm_eval, 'sft_eval', 'position_bias')[1])} | "
        f"{_fmt(_first_last(grm_eval, 'grm_eval', 'position_bias')[1])} | |",
        f"| policy true accuracy ({int(prompts or 0)} held-out prompts, greedy) | {_fmt(pol_before)} | "
        f"{_fmt(pol_after)} | {_fmt(None if None in (pol_before, pol_after) else pol_after - pol_before)} |",
        f"| policy true accuracy of its initial weights (before the warm start) | {_fmt(pol_init)} | | |",
        f"| policy answer length | {_fmt(_first_last(policy_eval, 'policy_sft_eval', 'answer_length')[1])} | "
        f"{_fmt(_first_last(policy_eval, 'policy_eval', 'answer_length')[1])} | |",
    ]
    checks = [("GRM accuracy after RL above its warm start", grm_before, grm_after),
              ("policy true accuracy after RL above its warm start", pol_before, pol_after)]
    lines = ["# grlhf pipeline report", "", f"Run directory: `{root}`; wall time {summary.get('time_s', 0):.0f} s.", "",
             "## Before and after", "", *table, "", "## Claims", ""]
    for text, before, after in checks:
        ok = before is not None and after is not None and after > before
        lines.append(f"- [{'x' if ok else ' '}] {text} ({_fmt(before)} -> {_fmt(after)})")
    lines += ["", "## Reward-hacking monitors (policy RL)", "", *monitor_lines(policy_eval)]
    evaluation = summary.get("evaluation") or {}
    if evaluation.get("sections"):
        timings = ", ".join(f"{k[:-2]} {v:.0f} s" for k, v in evaluation.get("timings", {}).items())
        lines += ["", f"# Evaluation (`grlhf.eval` on held-out synthetic data; {timings})", "",
                  *evaluation["sections"]]
    elif evaluation.get("skipped"):
        lines += ["", f"Evaluation skipped: {evaluation['skipped']}."]
    lines += ["", "## Plots", ""] + [f"![{title}]({file})" for file, title in drawn]
    lines += ["", "Models (HF directories, loadable by transformers and vLLM): "
              f"`{summary.get('grm', {}).get('model', 'n/a')}`, `{summary.get('policy', {}).get('model', 'n/a')}`."]
    path = root / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


__all__ = ["MONITORS", "PLOTS", "monitor_lines", "plot", "write_report"]
