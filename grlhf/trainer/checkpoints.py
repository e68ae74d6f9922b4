"""Training-state checkpoints: an orbax ``CheckpointManager`` holding a pytree of arrays and a JSON dict.

Each step directory has two items: ``state`` (``StandardSave`` of any pytree of jax arrays, e.g.
``{"model": nnx.state(model, nnx.Param), "opt": nnx.state(optimizer)}``) and ``meta`` (``JsonSave`` of a
JSON-serialisable dict: step, rng seed, data-iterator ``state_dict()``s, metrics). Restoring goes through
abstract targets (``jax.ShapeDtypeStruct`` with ``.sharding``), so arrays land directly in the shardings
the caller asks for, also on a different mesh than the one that saved them. Orbax coordinates multi-process
runs itself: every process calls ``save``/``restore`` with its (global) arrays.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import jax
import numpy as np
import orbax.checkpoint as ocp

from grlhf.errors import UserError

log = logging.getLogger("grlhf.trainer")

PathLike = Union[str, os.PathLike]


def abstract_target(tree: Any) -> Any:
    """Concrete leaves -> ``jax.ShapeDtypeStruct`` (keeping a jax array's sharding); abstract leaves as is.

    Numpy arrays and Python scalars become abstract leaves on the default device, so they restore as
    (single-device) jax arrays.
    """

    def leaf(x: Any) -> Any:
        if isinstance(x, jax.ShapeDtypeStruct):
            if x.sharding is None:
                return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=_default_sharding())
            return x
        if isinstance(x, jax.Array):
            return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
        x = np.asarray(x)
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=_default_sharding())

    return jax.tree.map(leaf, tree)


def _jsonable(value: Any) -> Any:
    """Numpy/jax scalars and arrays in nested dicts/lists/tuples -> Python numbers and lists."""
    if isinstance(value, Mapping):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    if isinstance(value, (np.ndarray, np.generic, jax.Array)):
        return np.asarray(value).tolist()
    return value


def _root_cause(error: BaseException, limit: int = 300) -> str:
    """``Type: message`` of the innermost exception of a chain, on one line (orbax wraps tensorstore's)."""
    while (error.__cause__ or error.__context__) is not None:
        error = error.__cause__ or error.__context__
    text = " ".join(f"{type(error).__name__}: {error}".split())
    return text if len(text) <= limit else text[:limit] + "..."


def _default_sharding() -> jax.sharding.Sharding:
    return jax.sharding.SingleDeviceSharding(jax.local_devices()[0])


class CheckpointUnreadable(UserError, RuntimeError):
    """Every checkpoint of a directory failed to restore (each step's error is in the message)."""


class Checkpointer:
    """Numbered checkpoints in ``directory`` (``<directory>/<step>/{state,meta}``), the last ``keep`` kept."""

    def __init__(self, directory: PathLike, *, keep: int = 3, async_save: bool = True):
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self.directory = Path(directory).expanduser().absolute()  # orbax needs absolute paths
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=async_save, create=True)
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "meta"))
        self._unreadable: set[int] = set()  # steps restore skipped; a save of that step replaces them

    def save(self, step: int, state: Any, meta: dict, *, force: bool = False) -> bool:
        """Starts saving (finishes in the background with ``async_save``); True if a save was started.

        A step not newer than the latest saved one is skipped (returns False) unless ``force``, which
        replaces an existing checkpoint of the same step (as does a save of a step ``restore`` found
        unreadable). Numpy/jax scalars in ``meta`` become Python numbers.
        """
        step = int(step)
        force = force or step in self._unreadable
        if force and step in self.manager.all_steps():
            self.manager.wait_until_finished()
            self.manager.delete(step)
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(_jsonable(meta)))
        saved = bool(self.manager.save(step, args=args, force=force))
        if saved:
            log.info("saving checkpoint step %d to %s", step, self.directory)
        return saved

    def latest_step(self) -> Optional[int]:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(int(s) for s in self.manager.all_steps())

    def restore(self, step: Optional[int], target: Any) -> tuple[Any, dict]:
        """``(state, meta)`` of ``step`` (None: the newest readable one), state in the structure/shardings of
        ``target``.

        ``target`` has the structure of the saved state; its leaves are ``jax.ShapeDtypeStruct`` (with
        ``.sharding``) or concrete arrays (whose shape, dtype and sharding are used). With ``step=None`` a
        checkpoint that orbax cannot read (a truncated or corrupt file) is skipped with a warning naming its
        step and the error, and the next older one is tried; ``CheckpointUnreadable`` when none can be read.
        An explicit ``step`` is restored or fails, with no fallback.
        """
        self.manager.wait_until_finished()
        steps = self.all_steps()
        if step is not None:
            if int(step) not in steps:
                raise FileNotFoundError(f"no checkpoint of step {step} in {self.directory} (steps there: {steps})")
            return self._restore(int(step), target)
        if not steps:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        errors = []
        for candidate in reversed(steps):
            try:
                return self._restore(candidate, target)
            except Exception as error:  # orbax/tensorstore raise many types (ValueError, OSError, ...)
                reason = _root_cause(error)
                self._unreadable.add(candidate)
                errors.append(f"step {candidate}: {reason}")
                log.warning("checkpoint step %d in %s cannot be read (%s); trying the previous one", candidate,
                            self.directory, reason)
        raise CheckpointUnreadable(f"no readable checkpoint in {self.directory}: " + "; ".join(errors))

    def _restore(self, step: int, target: Any) -> tuple[Any, dict]:
        args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract_target(target)), meta=ocp.args.JsonRestore())
        restored = self.manager.restore(step, args=args)
        log.info("restored checkpoint step %d from %s", step, self.directory)
        return restored["state"], dict(restored["meta"])

    def wait(self) -> None:
        """Blocks until pending (async) saves are written."""
        self.manager.wait_until_finished()

    def close(self) -> None:
        """Waits for pending saves and releases orbax's resources."""
        self.manager.wait_until_finished()
        self.manager.close()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
