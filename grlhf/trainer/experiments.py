"""``experiment=n_scaling``: the paper's Figure 7 at toy scale, with seeds.

One GRM (trained here as in the pipeline, or ``reward.judge_path``), one score-only RM when an arm needs
it (trained here on the same preference pairs, from the GRM's warm start when there is one, or
``reward.rm_path``) and one warm-started policy; then stage 2 from that same warm start for each n in
``experiment.n_values``, each arm in ``experiment.arms`` (``grm``: grouped comparison; ``grm_single``:
each answer judged against one random other; ``rm``: the score-only RM) and each seed in
``experiment.seeds`` (``trainer.seed`` and ``data.seed``: the stage-2 run's sampling, prompts and held-out
set). Each run's gain in true accuracy on held-out prompts (its last evaluation minus its step-0 one) is
summarised per arm and n as the mean over seeds with a 95% Student-t interval (``n_scaling.json``,
``n_scaling.md``, ``n_scaling.png`` with error bars).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
from scipy import stats

from grlhf.config import Config, load_config
from grlhf.trainer.distributed import is_main
from grlhf.trainer.metrics import METRICS_FILE, read_metrics
from grlhf.trainer.resume import fresh_if_new, require_run_dir
from grlhf.trainer.stages import policy_init_args, run_grm_stage, run_stage, stage_args

ARM_LABELS = {"grm": "grouped comparison", "grm_single": "one opponent", "rm": "score-only RM",
              "oracle": "oracle (synthetic truth)"}


def mean_interval(values: Sequence[float], level: float = 0.95) -> dict[str, Any]:
    """``{"mean", "low", "high", "n"}``: the mean and its Student-t interval at ``level`` over independent
    runs (``low`` / ``high`` are None for a single run: one seed gives no interval)."""
    x = np.asarray(values, np.float64)
    if x.size == 0:
        raise ValueError("no values to summarise")
    mean = float(x.mean())
    if x.size < 2:
        return {"mean": mean, "low": None, "high": None, "n": 1}
    half = float(stats.t.ppf(0.5 + level / 2, x.size - 1) * x.std(ddof=1) / np.sqrt(x.size))
    return {"mean": mean, "low": mean - half, "high": mean + half, "n": int(x.size)}


def start_accuracy(run_dir: Path) -> float:
    """The policy's true accuracy at RL step 0 (its warm start's last evaluation)."""
    rows = [r for r in read_metrics(run_dir / METRICS_FILE) if r.get("stage") == "policy_eval" and r["step"] == 0]
    return float(rows[0].get("true_accuracy", 0.0)) if rows else 0.0


def train_rm(cfg: Config, args: Sequence[str], root: Path, init: Optional[str]) -> str:
    """The score-only RM on the GRM's preference pairs (``pipeline.grm`` overrides, no warm start), from
    ``init`` (the GRM's warm start) or ``model.path``; its exported directory."""
    extra = ["trainer.stage=rm", "sft.steps=0", "trainer.export_hf=true", f"trainer.run_dir={root / 'rm'}",
             *fresh_if_new(cfg, root / "rm")]
    summary = run_stage(load_config(stage_args(args, cfg.pipeline.grm, *extra,
                                               *([f"model.path={init}"] if init else []))))
    return summary["model"]


def summarise(gains: dict[str, dict[int, list[float]]]) -> dict[str, dict[str, dict[str, Any]]]:
    """Per arm and n: the mean gain over seeds, its 95% interval and the seeds' gains."""
    return {arm: {str(n): {**mean_interval(values), "gains": list(values)} for n, values in by_n.items()}
            for arm, by_n in gains.items()}


def markdown_table(summary: dict[str, dict[str, dict[str, Any]]], n_values: Sequence[int]) -> str:
    """Rows = arms, columns = n: ``mean [low, high]`` (the mean alone for one seed)."""
    def cell(s):
        return f"{s['mean']:+.3f}" + (f" [{s['low']:+.3f}, {s['high']:+.3f}]" if s["low"] is not None else "")

    lines = ["| arm | " + " | ".join(f"n = {n}" for n in n_values) + " |",
             "|---|" + "---|" * len(n_values)]
    lines += [f"| {ARM_LABELS.get(arm, arm)} | " + " | ".join(cell(by_n[str(n)]) for n in n_values) + " |"
              for arm, by_n in summary.items()]
    return "\n".join(lines) + "\n"


def plot_with_intervals(path: Path, summary: dict, n_values: Sequence[int], seeds: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 3.5))
    for arm, by_n in summary.items():
        cells = [by_n[str(n)] for n in n_values]
        means = np.array([c["mean"] for c in cells])
        halves = np.array([0.0 if c["low"] is None else c["mean"] - c["low"] for c in cells])
        axis.errorbar(list(n_values), means, yerr=halves, marker="o", capsize=3, label=ARM_LABELS.get(arm, arm))
    axis.set_title(f"true accuracy gain vs n (toy Figure 7; mean, 95% interval over {seeds} seed(s))")
    axis.set_xlabel("n (answers per prompt)")
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def n_scaling(cfg: Config, args: Sequence[str]) -> dict[str, Any]:
    began = time.perf_counter()
    e = cfg.experiment
    root = Path(cfg.trainer.run_dir or f"runs/n_scaling-{time.strftime('%Y%m%d-%H%M%S')}").resolve()
    if cfg.trainer.resume:
        require_run_dir(cfg)
    judge, init, grm_warm = cfg.reward.judge_path, [], None
    if not judge and set(e.arms) & {"grm", "grm_single"}:
        grm_summary = run_grm_stage(cfg, args, root)
        judge, init = grm_summary["model"], policy_init_args(cfg, grm_summary)
        grm_warm = grm_summary.get("warm_start_model")
    rm = cfg.reward.rm_path or (train_rm(cfg, args, root, grm_warm) if "rm" in e.arms else None)
    base = stage_args(args, cfg.pipeline.policy, "trainer.stage=policy", *init,
                      *([f"reward.judge_path={judge}"] if judge else []), *([f"reward.rm_path={rm}"] if rm else []))
    warm_cfg = load_config([*base, "reward.source=oracle", "trainer.steps=1", f"trainer.run_dir={root / 'warm'}",
                            *fresh_if_new(cfg, root / "warm")])
    warm_model = run_stage(warm_cfg)["warm_start_model"]  # (one oracle step after it; the export is before)
    batch = load_config([*base, "trainer.resume=false"]).trainer.batch_size  # (base names no run directory)
    gains: dict[str, dict[int, list[float]]] = {arm: {n: [] for n in e.n_values} for arm in e.arms}
    for seed in e.seeds:
        for n in e.n_values:
            for arm in e.arms:
                run_cfg = load_config([*base, f"model.path={warm_model}", "sft.steps=0", f"rollout.n={n}",
                                       f"reward.source={arm}", f"algorithm.micro_batch_size={batch * n}",
                                       "algorithm.mini_batch_size=0", f"trainer.seed={seed}", f"data.seed={seed}",
                                       f"trainer.run_dir={root / f'{arm}-n{n}-s{seed}'}",
                                       *fresh_if_new(cfg, root / f"{arm}-n{n}-s{seed}")])
                summary = run_stage(run_cfg)
                gain = summary["rl"].get("true_accuracy", 0.0) - start_accuracy(Path(summary["run_dir"]))
                gains[arm][n].append(gain)
    summary = summarise(gains)
    out = {"run_dir": str(root), "seeds": list(e.seeds), "n_values": list(e.n_values), "arms": list(e.arms),
           "judge": judge, "rm": rm, "gain": summary, "time_s": time.perf_counter() - began}
    if is_main():  # a multi-process run writes these once
        plot_with_intervals(root / "n_scaling.png", summary, e.n_values, len(e.seeds))
        (root / "n_scaling.md").write_text(markdown_table(summary, e.n_values))
        (root / "n_scaling.json").write_text(json.dumps(out, indent=2, allow_nan=False))
    return out


__all__ = ["ARM_LABELS", "markdown_table", "mean_interval", "n_scaling", "start_accuracy", "summarise", "train_rm"]
