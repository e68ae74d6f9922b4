"""The trainer: the shared train step, the stage loops (sft, grm), checkpoints, metrics and runs."""

from grlhf.trainer.stages import run

__all__ = ["run"]
