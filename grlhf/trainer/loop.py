"""The run and its phases: model and run directory set-up, and the step loop with checkpoints and resume.

A run has one or more phases (``sft`` then ``grm``, say). A phase is a step function plus the state
that must survive a crash: the model's parameters, the optimizer state and the data iterator's
position (randomness is derived from ``(seed, phase, step)``, so it needs no state). Each phase
checkpoints into ``checkpoints/<phase>``; with ``trainer.resume=true`` a phase restarts from its last
checkpoint, and a finished phase only restores its final weights.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import jax
from flax import nnx

from grlhf.config import Config, check_mesh, to_yaml
from grlhf.trainer import distributed
from grlhf.trainer.checkpoints import Checkpointer
from grlhf.trainer.metrics import METRICS_FILE, SAMPLES_FILE, MetricsLogger, truncate_metrics

log = logging.getLogger("grlhf.trainer")


def resolve_model_path(path: str, tiny_seed: int = 0) -> Path:
    """An HF model directory; ``tiny`` / ``tiny:<family>`` is the built-in tiny checkpoint (built offline)."""
    if path == "tiny" or path.startswith("tiny:"):
        from grlhf.tiny import cached_tiny_checkpoint

        family = path.partition(":")[2] or "qwen2_vl"
        return cached_tiny_checkpoint(family, tiny_seed)
    directory = Path(path)
    if not (directory / "config.json").is_file():
        raise FileNotFoundError(f"model.path={path}: no HF model directory there (config.json not found)")
    return directory


@dataclass
class Run:
    """What every phase of a run shares."""

    cfg: Config
    dir: Path
    model_dir: Path
    model: Any
    processor: Any
    mesh: Any
    logger: MetricsLogger
    is_main: bool = True
    extras: dict = field(default_factory=dict)

    def export(self, name: str, model=None) -> Optional[Path]:
        """The model as an HF directory ``<run>/hf/<name>`` (tokenizer and processor included; a reward
        model adds its head, ``score.safetensors``)."""
        from grlhf.models.qwen_vl import save_pretrained
        from grlhf.models.qwen_vl.reward_model import QwenVLRewardModel, save_reward_model

        target = self.dir / "hf" / name
        model = distributed.host_model(self.model if model is None else model)  # every process: a collective
        if self.is_main:
            save = save_reward_model if isinstance(model, QwenVLRewardModel) else save_pretrained
            save(model, target, dtype=self.cfg.model.param_dtype)
            self.processor.save_pretrained(target)
        distributed.barrier(f"export {target}")  # the others may load it next (a pipeline's judge)
        return target


def make_mesh(cfg: Config):
    """The ``(data, fsdp, tp)`` mesh over all devices, checked against the config (None on one device)."""
    from grlhf.models.qwen_vl.sharding import make_mesh as build

    data, fsdp, tp = check_mesh(cfg, jax.device_count(), jax.process_count())
    if jax.device_count() == 1:
        return None
    return build(data=data, fsdp=fsdp, tp=tp)


def start_run(cfg: Config, total_steps: int) -> Run:
    """Check inputs (before any compilation), create the run directory, save the config, load the model."""
    from grlhf.data.processor import load_processor
    from grlhf.models.qwen_vl import from_pretrained

    distributed.initialize(cfg)
    model_dir = resolve_model_path(cfg.model.path, cfg.model.tiny_seed)
    mesh = make_mesh(cfg)
    run_dir = Path(cfg.trainer.run_dir or f"runs/{cfg.trainer.stage}-{time.strftime('%Y%m%d-%H%M%S')}").resolve()
    main = distributed.is_main()
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(to_yaml(cfg))
    model = from_pretrained(model_dir, dtype=cfg.model.dtype, param_dtype=cfg.model.param_dtype, mesh=mesh,
                            remat=cfg.model.remat, attention_impl=cfg.model.attention_impl)
    processor = load_processor(model_dir)
    logger = MetricsLogger(run_dir, total_steps=total_steps, jsonl=cfg.logging.jsonl,
                           tensorboard=cfg.logging.tensorboard, progress=cfg.logging.progress, is_main=main,
                           desc=cfg.trainer.stage)
    return Run(cfg, run_dir, model_dir, model, processor, mesh, logger, main)


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


class NonFiniteLoss(RuntimeError):
    """Too many consecutive updates with a non-finite loss or gradient."""


def _train_state(run: Run, phase: Phase) -> dict:
    return {"model": nnx.state(run.model, nnx.Param), "opt": nnx.state(phase.optimizer, nnx.optimizer.OptState)}


def run_phase(run: Run, phase: Phase) -> dict[str, float]:
    """Train ``phase`` to ``total_steps`` (resuming if asked); returns the last evaluation's metrics."""
    cfg = run.cfg
    ckpt = Checkpointer(run.dir / "checkpoints" / phase.name, keep=cfg.checkpoint.keep,
                        async_save=cfg.checkpoint.async_save)
    start, bad, last_eval = 0, 0, {}
    if cfg.trainer.resume and ckpt.latest_step() is not None:
        state, meta = ckpt.restore(None, _train_state(run, phase))
        nnx.update(run.model, state["model"])
        nnx.update(phase.optimizer, state["opt"])
        phase.iterator.load_state_dict(meta["iterator"])
        start, bad, last_eval = int(meta["step"]), int(meta.get("bad_steps", 0)), meta.get("last_eval", {})
        if run.is_main:
            truncate_metrics(run.dir / METRICS_FILE, start, stage=phase.name)
            truncate_metrics(run.dir / METRICS_FILE, start, stage=f"{phase.name}_eval")
            truncate_metrics(run.dir / SAMPLES_FILE, start, stage=phase.name)
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
    for step in range(start, phase.total_steps):
        began = time.perf_counter()
        metrics = phase.step_fn(step)
        metrics["step_time"] = time.perf_counter() - began
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
        if done or (cfg.checkpoint.every and (step + 1) % cfg.checkpoint.every == 0):
            meta = {"step": step + 1, "bad_steps": bad, "iterator": phase.iterator.state_dict(),
                    "last_eval": last_eval, "phase": phase.name}
            ckpt.save(step + 1, _train_state(run, phase), meta, force=done)
    ckpt.wait()
    ckpt.close()
    return last_eval


__all__ = ["NonFiniteLoss", "Phase", "Run", "make_mesh", "resolve_model_path", "run_phase", "start_run"]
