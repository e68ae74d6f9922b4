"""The trainer: one RL learner and one supervised learner (``learners``), the stages made of them
(``stages``), the step loop with checkpoints and resume (``loop``), and the experiments."""

from __future__ import annotations

from typing import Any, Sequence

from grlhf.config import Config
from grlhf.dry_run import dry_run
from grlhf.trainer.experiments import n_scaling
from grlhf.trainer.stages import run_pipeline, run_stage


def run(cfg: Config, args: Sequence[str] = ()) -> dict[str, Any]:
    """Run ``cfg.trainer.stage`` (``args``: the command line, which a pipeline re-applies to each stage)."""
    if cfg.trainer.dry_run:
        return {"report": dry_run(cfg)}
    if cfg.experiment.name == "n_scaling":
        return n_scaling(cfg, args)
    if cfg.trainer.stage == "pipeline":
        return run_pipeline(cfg, args)
    return run_stage(cfg)


__all__ = ["run"]
