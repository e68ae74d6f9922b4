"""What ``python -m grlhf.train`` runs for each ``trainer.stage``: the phases in order, then the exports."""

from __future__ import annotations

import logging
import time
from typing import Any

from flax import nnx

from grlhf.config import Config, ConfigError
from grlhf.trainer import grm
from grlhf.trainer.loop import Run, run_phase, start_run

log = logging.getLogger("grlhf.trainer")


def rl_steps(cfg: Config, num_items: int) -> int:
    """``trainer.steps``, or ``trainer.epochs`` passes over ``num_items`` in batches of ``trainer.batch_size``."""
    return cfg.trainer.steps or cfg.trainer.epochs * max(num_items // cfg.trainer.batch_size, 1)


def frozen_copy(model) -> Any:
    """A reference model: an independent copy of ``model``'s parameters (it never trains)."""
    return nnx.clone(model)


def make_sampler(run: Run):
    from grlhf.rollout.jax_sampler import JaxSampler

    return JaxSampler(run.model, processor=run.processor, length_buckets=run.cfg.data.length_buckets,
                      patch_buckets=run.cfg.data.patch_buckets, mesh=run.mesh)


def run_grm(cfg: Config) -> dict[str, Any]:
    """``stage=sft`` (warm start only) or ``stage=grm`` (warm start when ``sft.steps > 0``, then RL)."""
    pairs, held_out, traces = grm.preference_data(cfg)
    steps = cfg.sft.steps if cfg.trainer.stage == "sft" else rl_steps(cfg, len(pairs))
    if cfg.trainer.stage == "sft" and steps == 0:
        raise ConfigError("trainer.stage=sft needs sft.steps > 0")
    run = start_run(cfg, steps)
    began = time.perf_counter()
    sampler = make_sampler(run)
    evaluate = grm.eval_fn(run, sampler, held_out) if held_out else None
    summary: dict[str, Any] = {"run_dir": str(run.dir)}
    if cfg.sft.steps > 0:
        summary["warm_start"] = run_phase(run, grm.warm_start_phase(run, traces, evaluate=evaluate))
        if run.cfg.trainer.export_hf:
            summary["warm_start_model"] = str(run.export("sft"))
    if cfg.trainer.stage == "grm":
        reference = frozen_copy(run.model) if cfg.algorithm.kl_coef > 0 else None
        phase = grm.grm_phase(run, sampler, pairs, reference, steps, evaluate=evaluate)
        phase.start_eval = summary.get("warm_start")  # the warm start's last evaluation is RL's step 0
        summary["rl"] = run_phase(run, phase)
        if run.cfg.trainer.export_hf:
            summary["model"] = str(run.export("grm"))
    summary["time_s"] = time.perf_counter() - began
    run.logger.close()
    return summary


def run(cfg: Config) -> dict[str, Any]:
    """Run ``cfg.trainer.stage``; returns a summary (run directory, final evaluations, exported models)."""
    if cfg.trainer.dry_run:
        from grlhf.trainer.dry_run import dry_run

        return {"report": dry_run(cfg)}
    if cfg.trainer.stage in ("sft", "grm"):
        return run_grm(cfg)
    raise ConfigError(f"trainer.stage={cfg.trainer.stage!r} is not implemented yet (available: sft, grm)")


__all__ = ["frozen_copy", "make_sampler", "rl_steps", "run", "run_grm"]
