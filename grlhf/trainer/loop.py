"""The step loop of a phase, with checkpoints and resume.

A run has one or more phases (``sft`` then ``grm``, say). A phase is a step function plus the state
that must survive a crash: the model's parameters, the optimizer state, the data iterator's position and
``carry`` (small values a step function keeps between steps, e.g. an adaptive KL coefficient; randomness
is derived from ``(seed, phase, step)``, so it needs no state). Each phase checkpoints into
``checkpoints/<phase>``; with ``trainer.resume=true`` a phase restarts from its newest readable checkpoint
(an unreadable one is skipped with a warning), a finished phase only restores its final weights, and a
``stage="resume"`` row in ``metrics.jsonl`` marks the step where each resumed phase began again.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from flax import nnx

from grlhf.trainer.checkpoints import Checkpointer
from grlhf.trainer.metrics import METRICS_FILE, SAMPLES_FILE, truncate_metrics
from grlhf.trainer.profiling import StepProfiler
from grlhf.trainer.runs import Run

log = logging.getLogger("grlhf.trainer")
RESUME_STAGE = "resume"  # metrics.jsonl rows marking where a resume began: {"step", "phase", "config"}


@dataclass
class Phase:
    """One stage's loop: ``step_fn(step) -> metrics`` updates the model; ``eval_fn() -> metrics``."""

    name: str
    total_steps: int
    step_fn: Callable[[int], dict]
    optimizer: Any
    iterator: Any
    eval_fn: Optional[Callable[[], dict]] = None
    eval_every: int = 0
    start_eval: Optional[dict] = None  # step 0's evaluation when already known (the previous phase's last)
    carry: dict = field(default_factory=dict)  # JSON values the step function keeps; checkpointed


class NonFiniteLoss(RuntimeError):
    """Too many consecutive updates with a non-finite loss or gradient."""


def _train_state(run: Run, phase: Phase) -> dict:
    return {"model": nnx.state(run.model, nnx.Param), "opt": nnx.state(phase.optimizer, nnx.optimizer.OptState)}


def _forget_after(run: Run, phase: str, start: int) -> None:
    """Drops the phase's rows logged after ``start`` (they are computed again); with no checkpoint
    (``start == 0``) every row of the phase goes, its step-0 evaluation included, since it is logged again."""
    if run.is_main:
        after = start if start > 0 else -1
        truncate_metrics(run.dir / METRICS_FILE, after, stage=phase)
        truncate_metrics(run.dir / METRICS_FILE, after, stage=f"{phase}_eval")
        truncate_metrics(run.dir / SAMPLES_FILE, after, stage=phase)


def _checkpoint_due(policy, steps_done: int, since_save_s: float) -> bool:
    """Every ``checkpoint.every`` steps, or once ``checkpoint.interval_s`` seconds passed since the last save."""
    by_steps = bool(policy.every) and steps_done % policy.every == 0
    return by_steps or (policy.interval_s > 0 and since_save_s >= policy.interval_s)


def run_phase(run: Run, phase: Phase) -> dict[str, float]:
    """Train ``phase`` to ``total_steps`` (resuming if asked); returns the last evaluation's metrics."""
    cfg = run.cfg
    ckpt = Checkpointer(run.dir / "checkpoints" / phase.name, keep=cfg.checkpoint.keep,
                        async_save=cfg.checkpoint.async_save)
    start, bad, last_eval = 0, 0, {}
    if cfg.trainer.resume:
        if ckpt.latest_step() is not None:
            state, meta = ckpt.restore(None, _train_state(run, phase))  # the newest readable checkpoint
            nnx.update(run.model, state["model"])
            nnx.update(phase.optimizer, state["opt"])
            phase.iterator.load_state_dict(meta["iterator"])
            phase.carry.update(meta.get("carry", {}))
            start, bad, last_eval = int(meta["step"]), int(meta.get("bad_steps", 0)), meta.get("last_eval", {})
        _forget_after(run, phase.name, start)
        if start < phase.total_steps:
            # the record of where this resume began (no numbers: nothing for TensorBoard to plot)
            run.logger.log(start, {"phase": phase.name, "config": run.resume_config or ""}, stage=RESUME_STAGE)
            log.info("%s: resumed at step %d of %d", phase.name, start, phase.total_steps)
    if start >= phase.total_steps:
        ckpt.close()
        return last_eval
    run.logger.set_progress(start, phase.total_steps, desc=phase.name)

    def evaluate(step: int) -> dict:
        metrics = phase.eval_fn()
        run.logger.log(step, metrics, stage=f"{phase.name}_eval")
        return metrics

    if start == 0 and phase.start_eval:
        last_eval = phase.start_eval
        run.logger.log(0, last_eval, stage=f"{phase.name}_eval")
    elif start == 0 and phase.eval_fn is not None:
        last_eval = evaluate(0)
    last_save = time.monotonic()
    profiler = StepProfiler(run.dir / "profile" / phase.name, cfg.logging.profile_from, cfg.logging.profile_steps,
                            enabled=run.is_main)
    for step in range(start, phase.total_steps):
        profiler.before(step)
        began = time.perf_counter()
        metrics = phase.step_fn(step)
        metrics["step_time"] = time.perf_counter() - began
        profiler.after(step)
        samples = metrics.pop("samples", None)  # example rollouts, written beside the metrics
        bad = 0 if metrics.get("updates_skipped", 0) == 0 else bad + 1
        if bad:
            log.warning("%s step %d: non-finite loss or gradient, update skipped (%d in a row)", phase.name, step + 1,
                        bad)
        if bad >= cfg.trainer.max_bad_steps:
            ckpt.close()
            raise NonFiniteLoss(f"{phase.name}: {bad} consecutive steps with a non-finite loss or gradient, the "
                                f"last at step {step + 1}; stopping "
                                f"(trainer.max_bad_steps={cfg.trainer.max_bad_steps})")
        run.logger.log(step + 1, metrics, stage=phase.name)
        if samples:
            run.logger.log_samples(step + 1, samples, stage=phase.name)
        done = step + 1 == phase.total_steps
        if phase.eval_fn is not None and (done or (phase.eval_every and (step + 1) % phase.eval_every == 0)):
            last_eval = evaluate(step + 1)
        if done or _checkpoint_due(cfg.checkpoint, step + 1, time.monotonic() - last_save):
            last_save = time.monotonic()
            meta = {"step": step + 1, "bad_steps": bad, "iterator": phase.iterator.state_dict(),
                    "last_eval": last_eval, "phase": phase.name, "carry": phase.carry}
            ckpt.save(step + 1, _train_state(run, phase), meta, force=done)
    profiler.stop()
    ckpt.wait()
    ckpt.close()
    return last_eval


__all__ = ["NonFiniteLoss", "Phase", "RESUME_STAGE", "run_phase"]
