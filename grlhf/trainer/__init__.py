"""The trainer: one RL learner and one supervised learner (``learners``), the stages made of them
(``stages``), the step loop with checkpoints and resume (``loop``), and the experiments.

The stages are imported when ``run`` is called, so that ``grlhf.trainer.step`` (the train step: models and
rl only) imports without the run machinery's dependencies (OmegaConf, tensorboardX), as on a bare GPU image
(bench/gpu_step.py uses it there).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:
    from grlhf.config import Config


def run(cfg: "Config", args: Sequence[str] = ()) -> dict[str, Any]:
    """Run ``cfg.trainer.stage`` (``args``: the command line, which a pipeline re-applies to each stage)."""
    if cfg.trainer.dry_run:
        from grlhf.dry_run import dry_run

        return {"report": dry_run(cfg)}
    if cfg.experiment.name == "n_scaling":
        from grlhf.trainer.experiments import n_scaling

        return n_scaling(cfg, args)
    from grlhf.trainer.stages import run_pipeline, run_stage

    return run_pipeline(cfg, args) if cfg.trainer.stage == "pipeline" else run_stage(cfg)


__all__ = ["run"]
