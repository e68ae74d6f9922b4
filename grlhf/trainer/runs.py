"""A run: its directory, its config, its model and processor, its mesh and its metrics logger."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import jax

from grlhf.config import Config, check_mesh, to_yaml
from grlhf.data.processor import load_processor
from grlhf.models.qwen_vl import from_pretrained, save_pretrained
from grlhf.models.qwen_vl.reward_model import QwenVLRewardModel, save_reward_model
from grlhf.models.qwen_vl.sharding import make_mesh as build_mesh
from grlhf.tiny import resolve_model_path
from grlhf.trainer.distributed import barrier, host_model, initialize, is_main
from grlhf.trainer.metrics import MetricsLogger
from grlhf.trainer.resume import CONFIG_FILE, next_resume_file


def make_mesh(cfg: Config):
    """The ``(data, fsdp, tp)`` mesh over all devices, checked against the config (None on one device)."""
    data, fsdp, tp = check_mesh(cfg, jax.device_count(), jax.process_count())
    return None if jax.device_count() == 1 else build_mesh(data=data, fsdp=fsdp, tp=tp)


@dataclass
class Run:
    """What every phase of a run shares. ``model`` is the actor: the model being trained."""

    cfg: Config
    dir: Path
    model_dir: Path
    model: Any
    processor: Any
    mesh: Any
    logger: MetricsLogger
    is_main: bool = True
    resume_config: Optional[str] = None  # a resume: the file its config was saved in (resume-<n>.yaml)

    def export(self, name: str) -> Optional[Path]:
        """The model as an HF directory ``<run>/hf/<name>`` (tokenizer and processor included; a reward
        model adds its head, ``score.safetensors``)."""
        target = self.dir / "hf" / name
        model = host_model(self.model)  # every process: a collective
        if self.is_main:
            save = save_reward_model if isinstance(model, QwenVLRewardModel) else save_pretrained
            save(model, target, dtype=self.cfg.model.param_dtype)
            self.processor.save_pretrained(target)
        barrier(f"export {target}")  # the others may load it next (a pipeline's judge)
        return target


def start_run(cfg: Config, total_steps: int) -> Run:
    """Check inputs (before any compilation), create the run directory, save the config (``config.yaml``, or
    on a resume ``resume-<n>.yaml``, keeping the first), load the model."""
    initialize(cfg)
    model_dir = resolve_model_path(cfg.model.path, cfg.model.tiny_seed)
    mesh = make_mesh(cfg)
    run_dir = Path(cfg.trainer.run_dir or f"runs/{cfg.trainer.stage}-{time.strftime('%Y%m%d-%H%M%S')}").resolve()
    main = is_main()
    saved_as = next_resume_file(run_dir) if cfg.trainer.resume else CONFIG_FILE
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / saved_as).write_text(to_yaml(cfg))
    model = from_pretrained(model_dir, dtype=cfg.model.dtype, param_dtype=cfg.model.param_dtype, mesh=mesh,
                            remat=cfg.model.remat, attention_impl=cfg.model.attention_impl)
    logger = MetricsLogger(run_dir, total_steps=total_steps, jsonl=cfg.logging.jsonl,
                           tensorboard=cfg.logging.tensorboard, progress=cfg.logging.progress, is_main=main,
                           desc=cfg.trainer.stage)
    return Run(cfg, run_dir, model_dir, model, load_processor(model_dir), mesh, logger, main,
               saved_as if cfg.trainer.resume else None)


__all__ = ["Run", "make_mesh", "start_run"]
