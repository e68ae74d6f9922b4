"""The phase loop's checkpoint cadence (by steps, by seconds since the last save) and its step profiles."""

import gzip
import json
import types
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

from grlhf.config import CheckpointConfig, load_config
from grlhf.trainer import loop
from grlhf.trainer.learners import Budget, new_phase
from grlhf.trainer.loop import _checkpoint_due, run_phase
from grlhf.trainer.profiling import HOST_REPORT
from grlhf.trainer.runs import start_run
from tests.trainer.test_learners import TINY


@pytest.mark.parametrize("every, interval_s, steps_done, since_s, due", [
    (20, 0.0, 20, 0.0, True), (20, 0.0, 19, 1e6, False),  # steps only: the clock is ignored
    (0, 60.0, 7, 59.9, False), (0, 60.0, 7, 60.0, True),  # seconds only
    (20, 60.0, 40, 1.0, True), (20, 60.0, 41, 61.0, True), (20, 60.0, 41, 1.0, False), (0, 0.0, 5, 1e6, False)])
def test_a_checkpoint_is_due_every_n_steps_or_after_interval_seconds(every, interval_s, steps_done, since_s, due):
    assert _checkpoint_due(CheckpointConfig(every=every, interval_s=interval_s), steps_done, since_s) is due


def _saved_steps(run_dir: Path, phase: str) -> list[int]:
    return sorted(int(p.name) for p in (run_dir / "checkpoints" / phase).iterdir() if p.name.isdigit())


def test_a_phase_saves_by_wall_clock_when_asked(tmp_path, monkeypatch):
    """Each step takes 10 (fake) seconds; with ``interval_s=25`` the phase saves after steps 3 and 6, and at its end."""
    clock = [0.0]
    monkeypatch.setattr(loop, "time", types.SimpleNamespace(monotonic=lambda: clock[0],
                                                              perf_counter=lambda: clock[0]))

    def ten_seconds(phase, optimizer, indices, step):
        clock[0] += 10.0
        return {"loss": 1.0}

    args = [*TINY, f"trainer.run_dir={tmp_path}", "checkpoint.every=0", "checkpoint.interval_s=25",
            "checkpoint.keep=10", "checkpoint.async_save=false"]
    run = start_run(load_config(args), 2)
    run_phase(run, new_phase(run, "policy", Budget(7, 2, 1e-3, 0.0, 0), 8, ten_seconds))
    run.logger.close()
    assert _saved_steps(tmp_path, "policy") == [3, 6, 7]


def test_profiled_steps_write_a_trace_and_a_host_profile(tmp_path):
    square = jax.jit(lambda x: (x @ x).sum())

    def jitted_work(phase, optimizer, indices, step):
        return {"loss": float(square(jnp.ones((64, 64))))}

    args = [*TINY, f"trainer.run_dir={tmp_path}", "logging.profile_steps=2", "logging.profile_from=1",
            "checkpoint.every=0"]
    run = start_run(load_config(args), 2)
    run_phase(run, new_phase(run, "sft", Budget(4, 2, 1e-3, 0.0, 0), 8, jitted_work))
    run.logger.close()
    profile = tmp_path / "profile" / "sft"
    host = (profile / HOST_REPORT).read_text()
    assert "jitted_work" in host and "cumulative" in host
    assert host.count("jitted_work") == 1 and "2    " in host.split("jitted_work")[0].splitlines()[-1]  # 2 calls
    traces = list(profile.rglob("perfetto_trace.json.gz"))
    assert len(traces) == 1
    events = json.load(gzip.open(traces[0]))
    names = {e.get("name", "") for e in (events["traceEvents"] if isinstance(events, dict) else events)}
    assert any("square" in name or "lambda" in name for name in names), sorted(names)[:20]
