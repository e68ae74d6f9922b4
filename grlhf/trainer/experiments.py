"""``experiment=n_scaling``: the paper's Figure 7 at toy scale.

One GRM (trained here as in the pipeline, or ``reward.judge_path``) and one warm-started policy; then stage
2 from that same warm start for each n in ``N_VALUES``, with grouped comparison (``reward.source=grm``)
and without it (``grm_single``: each answer judged against one random other). The gain in true
accuracy on held-out prompts is plotted against n (``n_scaling.png``, ``n_scaling.json``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Sequence

from grlhf.config import Config, load_config
from grlhf.trainer.distributed import is_main
from grlhf.trainer.metrics import METRICS_FILE, read_metrics
from grlhf.trainer.report import plot
from grlhf.trainer.resume import fresh_if_new, require_run_dir
from grlhf.trainer.stages import policy_init_args, run_grm_stage, run_stage, stage_args

N_VALUES = (2, 3, 5, 8)
SOURCES = ("grm", "grm_single")


def n_scaling(cfg: Config, args: Sequence[str]) -> dict[str, Any]:
    began = time.perf_counter()
    root = Path(cfg.trainer.run_dir or f"runs/n_scaling-{time.strftime('%Y%m%d-%H%M%S')}").resolve()
    if cfg.trainer.resume:
        require_run_dir(cfg)
    judge, init = cfg.reward.judge_path, []
    if not judge:
        grm_summary = run_grm_stage(cfg, args, root)
        judge, init = grm_summary["model"], policy_init_args(cfg, grm_summary)
    base = stage_args(args, cfg.pipeline.policy, "trainer.stage=policy", f"reward.judge_path={judge}", *init)
    warm_cfg = load_config([*base, "reward.source=oracle", "trainer.steps=1", f"trainer.run_dir={root / 'warm'}",
                            *fresh_if_new(cfg, root / "warm")])
    warm_model = run_stage(warm_cfg)["warm_start_model"]  # (one oracle step after it; the export is before)
    batch = load_config([*base, "trainer.resume=false"]).trainer.batch_size  # (base names no run directory)
    results: dict[str, dict[int, float]] = {source: {} for source in SOURCES}
    for n in N_VALUES:
        for source in SOURCES:
            run_cfg = load_config([*base, f"model.path={warm_model}", "sft.steps=0", f"rollout.n={n}",
                                   f"reward.source={source}", f"algorithm.micro_batch_size={batch * n}",
                                   "algorithm.mini_batch_size=0", f"trainer.run_dir={root / f'{source}-n{n}'}",
                                   *fresh_if_new(cfg, root / f"{source}-n{n}")])
            summary = run_stage(run_cfg)
            results[source][n] = summary["rl"].get("true_accuracy", 0.0) - start_accuracy(Path(summary["run_dir"]))
    out = {"run_dir": str(root), "gain": {s: {str(n): v for n, v in r.items()} for s, r in results.items()},
           "time_s": time.perf_counter() - began}
    if is_main():  # a multi-process run writes these once
        plot(root / "n_scaling.png", "true accuracy gain vs n (toy Figure 7)",
             [(f"{'grouped comparison' if s == 'grm' else 'one opponent'}", list(N_VALUES),
               [results[s][n] for n in N_VALUES]) for s in SOURCES], xlabel="n (answers per prompt)")
        (root / "n_scaling.json").write_text(json.dumps(out, indent=2))
    return out


def start_accuracy(run_dir: Path) -> float:
    """The policy's true accuracy at RL step 0 (its warm start's last evaluation)."""
    rows = [r for r in read_metrics(run_dir / METRICS_FILE) if r.get("stage") == "policy_eval" and r["step"] == 0]
    return float(rows[0].get("true_accuracy", 0.0)) if rows else 0.0


__all__ = ["N_VALUES", "SOURCES", "n_scaling", "start_accuracy"]
