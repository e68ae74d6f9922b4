"""The rules of ``trainer.resume=true``: which run directory, which config, and what is recorded.

A resumed run must exist (its directory and the ``config.yaml`` it started with). The new config is
compared with the one the run last ran with (``config.yaml``, or the newest ``resume-<n>.yaml``): keys that
change the math (model, data, algorithm, optimizer, batch and micro-batch sizes, rollout, reward, seeds)
must match, unless ``trainer.allow_config_change=true``; the keys in ``MAY_CHANGE`` (how long to train,
how often to evaluate, log and checkpoint, where and on what devices) may differ. ``config.yaml`` stays
the record of the start; each resume writes the config it ran with to ``resume-<n>.yaml``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping, Optional

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from grlhf.config import Config, ConfigError

log = logging.getLogger("grlhf.trainer")

CONFIG_FILE = "config.yaml"
RESUME_PREFIX = "resume-"
# keys (or whole sections, ending in ".") that a resume may change: they do not change what a step computes
MAY_CHANGE = ("trainer.steps", "trainer.epochs", "trainer.eval_every", "sft.steps", "sft.eval_every",
              "trainer.resume", "trainer.allow_config_change", "trainer.run_dir", "trainer.dry_run",
              "trainer.export_hf", "trainer.max_bad_steps", "trainer.mesh.", "logging.", "checkpoint.",
              "distributed.", "pipeline.grm", "pipeline.policy")
MAX_LISTED = 12  # changed keys named in an error


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings -> ``{dotted key: leaf}`` (lists are leaves)."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def may_change(key: str) -> bool:
    return any(key == rule or (rule.endswith(".") and key.startswith(rule)) for rule in MAY_CHANGE)


def math_changes(before: Mapping[str, Any], after: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """``(key, before, after)`` for each flattened key outside ``MAY_CHANGE`` whose value differs (a key
    missing on one side counts as changed)."""
    missing = object()
    changes = []
    for key in sorted(set(before) | set(after)):
        old, new = before.get(key, missing), after.get(key, missing)
        if not may_change(key) and old != new:
            changes.append((key, "(absent)" if old is missing else old, "(absent)" if new is missing else new))
    return changes


def resume_files(run_dir: Path) -> list[Path]:
    """``config.yaml`` then ``resume-1.yaml``, ``resume-2.yaml``, ... as far as they exist, in order."""
    numbered = []
    for path in run_dir.glob(f"{RESUME_PREFIX}*.yaml"):
        number = path.stem[len(RESUME_PREFIX):]
        if number.isdigit():
            numbered.append((int(number), path))
    start = [run_dir / CONFIG_FILE] if (run_dir / CONFIG_FILE).is_file() else []
    return start + [path for _, path in sorted(numbered)]


def next_resume_file(run_dir: Path) -> str:
    """The name this resume's config is saved under: ``resume-<n>.yaml``, one past the newest."""
    numbers = [int(p.stem[len(RESUME_PREFIX):]) for p in resume_files(run_dir) if p.name != CONFIG_FILE]
    return f"{RESUME_PREFIX}{max(numbers, default=0) + 1}.yaml"


def require_run_dir(cfg: Config) -> Path:
    """The directory ``trainer.resume=true`` continues; ``ConfigError`` naming it when it does not exist."""
    run_dir = Path(cfg.trainer.run_dir).expanduser().resolve()
    if not run_dir.is_dir():
        raise ConfigError(f"trainer.resume=true: the run directory {run_dir} (trainer.run_dir="
                          f"{cfg.trainer.run_dir}) does not exist; check the path, or drop trainer.resume to start "
                          f"a new run")
    return run_dir


def fresh_if_new(cfg: Config, sub_dir: Path) -> list[str]:
    """For a sub-run of a resumed pipeline or experiment: ``["trainer.resume=false"]`` when ``sub_dir``
    was never started (no ``config.yaml``: the crash came before it), else nothing."""
    return ["trainer.resume=false"] if cfg.trainer.resume and not (sub_dir / CONFIG_FILE).is_file() else []


def _saved_config(path: Path) -> dict[str, Any]:
    """A saved config read through the schema (keys added since then take their defaults)."""
    try:
        merged = OmegaConf.merge(OmegaConf.structured(Config), OmegaConf.load(path))
    except (OmegaConfBaseException, OSError, ValueError) as error:
        raise ConfigError(f"trainer.resume=true: cannot read {path} with this version of grlhf: "
                          f"{' '.join(str(error).split())}; set trainer.allow_config_change=true to resume "
                          "anyway") from None
    return flatten(OmegaConf.to_container(merged))


def check_resume(cfg: Config) -> Optional[Path]:
    """Checks a resume against the run it continues (module docstring); returns the config file it was
    compared with. ``ConfigError`` for a missing run, a directory that is not a run, or a math change
    without ``trainer.allow_config_change``; with it, the changes are logged as a warning."""
    run_dir = require_run_dir(cfg)
    files = resume_files(run_dir)
    if not files:
        raise ConfigError(f"trainer.resume=true: {run_dir} has no {CONFIG_FILE}, so it is not the directory of a "
                          "grlhf run")
    previous, allow = files[-1], cfg.trainer.allow_config_change
    try:
        before = _saved_config(previous)
    except ConfigError:
        if not allow:
            raise
        log.warning("resuming %s without comparing configs: %s is unreadable", run_dir, previous)
        return previous
    changes = math_changes(before, flatten(OmegaConf.to_container(OmegaConf.structured(cfg))))
    if not changes:
        return previous
    listed = "; ".join(f"{key}: {old!r} -> {new!r}" for key, old, new in changes[:MAX_LISTED])
    more = f" (and {len(changes) - MAX_LISTED} more)" if len(changes) > MAX_LISTED else ""
    if not allow:
        raise ConfigError(f"trainer.resume=true: the config changes what the run computes since {previous.name}: "
                          f"{listed}{more}. Resume with the same values, or set trainer.allow_config_change=true "
                          f"(the new config is kept in {next_resume_file(run_dir)})")
    log.warning("resuming %s with a changed config (trainer.allow_config_change=true): %s%s", run_dir, listed, more)
    return previous


__all__ = ["CONFIG_FILE", "MAY_CHANGE", "check_resume", "flatten", "fresh_if_new", "math_changes", "may_change",
           "next_resume_file", "require_run_dir", "resume_files"]
