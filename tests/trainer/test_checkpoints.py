"""Checkpointer: nnx params + optimizer state round trip, retention, async saves, shardings, errors."""

from __future__ import annotations

import gc

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from grlhf.errors import UserError
from grlhf.trainer.checkpoints import Checkpointer, CheckpointUnreadable


def _model_and_optimizer(seed: int) -> tuple[nnx.Linear, nnx.Optimizer]:
    model = nnx.Linear(3, 2, rngs=nnx.Rngs(seed))
    return model, nnx.Optimizer(model, optax.adamw(1e-2), wrt=nnx.Param)


def _train_state(model: nnx.Module, optimizer: nnx.Optimizer) -> dict:
    return {"model": nnx.state(model, nnx.Param), "opt": nnx.state(optimizer, nnx.optimizer.OptState)}


def _leaves(tree) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def test_nnx_roundtrip(tmp_path):
    model, optimizer = _model_and_optimizer(0)
    grads = nnx.grad(lambda m, x: jnp.sum(m(x) ** 2))(model, jnp.ones((4, 3)))
    optimizer.update(model, grads)
    meta = {"step": 1, "seed": 0, "data": {"epoch": 0, "position": 8}, "metrics": {"loss": 0.5}}
    with Checkpointer(tmp_path / "ckpt") as checkpointer:
        assert checkpointer.save(1, _train_state(model, optimizer), meta)
        checkpointer.wait()
        assert checkpointer.latest_step() == 1

    fresh_model, fresh_optimizer = _model_and_optimizer(1)  # different values, same structure
    with Checkpointer(tmp_path / "ckpt") as checkpointer:
        restored, restored_meta = checkpointer.restore(None, _train_state(fresh_model, fresh_optimizer))
    assert restored_meta == meta
    nnx.update(fresh_model, restored["model"])
    nnx.update(fresh_optimizer, restored["opt"])
    expected, actual = _train_state(model, optimizer), _train_state(fresh_model, fresh_optimizer)
    assert jax.tree.structure(expected) == jax.tree.structure(actual)
    for a, b in zip(_leaves(expected), _leaves(actual), strict=True):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)
    assert int(fresh_optimizer.step[...]) == 1


def test_keep_latest_and_async(tmp_path):
    checkpointer = Checkpointer(tmp_path, keep=2, async_save=True)
    state = {"w": jnp.arange(4.0), "b": {"c": jnp.zeros((2, 2), jnp.int32)}}
    assert checkpointer.latest_step() is None and checkpointer.all_steps() == []
    for step in (10, 20, 30):
        assert checkpointer.save(step, jax.tree.map(lambda x: x + step, state), {"step": step})
    assert not checkpointer.save(25, state, {"step": 25})  # not newer than the latest: skipped
    checkpointer.wait()
    assert checkpointer.all_steps() == [20, 30] and checkpointer.latest_step() == 30
    restored, meta = checkpointer.restore(20, state)
    assert meta == {"step": 20}
    np.testing.assert_array_equal(restored["w"], np.arange(4.0) + 20)
    np.testing.assert_array_equal(restored["b"]["c"], np.full((2, 2), 20))

    assert checkpointer.save(20, state, {"step": 20, "again": True}, force=True)  # replaces step 20
    checkpointer.wait()
    restored, meta = checkpointer.restore(20, state)
    assert meta == {"step": 20, "again": True}
    np.testing.assert_array_equal(restored["w"], np.arange(4.0))
    checkpointer.close()


def test_restore_into_sharding(tmp_path):
    mesh = Mesh(np.array(jax.devices()[:1]), ("data",))
    sharding = NamedSharding(mesh, PartitionSpec("data"))
    with Checkpointer(tmp_path, async_save=False) as checkpointer:
        meta = {"loss": np.float32(0.5), "n": jnp.int32(2), "v": np.arange(2), "t": (1, jnp.float32(2.0))}
        checkpointer.save(5, {"x": jnp.arange(8.0), "y": np.ones(3, np.float32)}, meta)
        target = {"x": jax.ShapeDtypeStruct((8,), jnp.float32, sharding=sharding),
                  "y": jax.ShapeDtypeStruct((3,), jnp.float32, sharding=NamedSharding(mesh, PartitionSpec()))}
        restored, meta = checkpointer.restore(5, target)
    assert meta == {"loss": 0.5, "n": 2, "v": [0, 1], "t": [1, 2.0]}
    assert restored["x"].sharding == sharding
    assert restored["y"].sharding == target["y"].sharding
    np.testing.assert_array_equal(restored["x"], np.arange(8.0))
    np.testing.assert_array_equal(restored["y"], np.ones(3))


def test_missing_checkpoint(tmp_path):
    directory = tmp_path / "nothing_here"
    with Checkpointer(directory) as checkpointer:
        with pytest.raises(FileNotFoundError, match="nothing_here"):
            checkpointer.restore(None, {"x": jnp.zeros(2)})
        checkpointer.save(1, {"x": jnp.zeros(2)}, {})
        with pytest.raises(FileNotFoundError, match=r"step 2 .*nothing_here"):
            checkpointer.restore(2, {"x": jnp.zeros(2)})


def _truncate_largest_file(step_dir) -> None:
    """A crash or a full disk mid-write: the step's largest array file cut short."""
    largest = max((p for p in (step_dir / "state").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    largest.write_bytes(largest.read_bytes()[:64])


# orbax leaves the reads of a failed restore's other arrays un-awaited; Python reports them when collected
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_an_unreadable_latest_checkpoint_falls_back_to_the_newest_readable_one(tmp_path, caplog):
    state = {"w": jnp.arange(512.0)}
    with Checkpointer(tmp_path, keep=3, async_save=False) as checkpointer:
        for step in (1, 2, 3):
            checkpointer.save(step, jax.tree.map(lambda x: x + step, state), {"step": step})
    _truncate_largest_file(tmp_path / "3")
    with Checkpointer(tmp_path, keep=3, async_save=False) as checkpointer:
        with caplog.at_level("WARNING", logger="grlhf.trainer"):
            restored, meta = checkpointer.restore(None, state)
        assert meta == {"step": 2}
        np.testing.assert_array_equal(restored["w"], np.arange(512.0) + 2)
        warning = " ".join(r.getMessage() for r in caplog.records if r.levelname == "WARNING")
        assert "step 3" in warning and "cannot be read" in warning and "OUT_OF_RANGE" in warning
        with pytest.raises(Exception):  # an explicit step gets no fallback
            checkpointer.restore(3, state)
        # the run goes on from step 2; saving step 3 again replaces the unreadable one
        assert checkpointer.save(3, jax.tree.map(lambda x: x + 30, state), {"step": 3})
    with Checkpointer(tmp_path, keep=3) as checkpointer:
        restored, meta = checkpointer.restore(None, state)
    assert meta == {"step": 3}
    np.testing.assert_array_equal(restored["w"], np.arange(512.0) + 30)
    gc.collect()  # the un-awaited reads are reported here, under this test's filter


# orbax leaves the reads of a failed restore's other arrays un-awaited; Python reports them when collected
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_no_readable_checkpoint_is_an_error_naming_every_step(tmp_path):
    state = {"w": jnp.arange(512.0)}
    with Checkpointer(tmp_path, keep=2, async_save=False) as checkpointer:
        for step in (1, 2):
            checkpointer.save(step, state, {"step": step})
    for step in (1, 2):
        _truncate_largest_file(tmp_path / str(step))
    with Checkpointer(tmp_path) as checkpointer:
        with pytest.raises(CheckpointUnreadable, match=r"no readable checkpoint in .*step 2: .*step 1: ") as error:
            checkpointer.restore(None, state)
    assert isinstance(error.value, UserError)  # the CLI reports it in one line, exit 2
    gc.collect()
