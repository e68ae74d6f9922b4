"""A multi-process run on JAX's own runtime: two processes on localhost (``jax.distributed`` with gloo CPU
collectives, one CPU device each, so the mesh spans both processes) train ``sft`` then ``grm`` and must log
the same metrics as one process with two devices and the same global batch, write metrics, exports and
the summary once (process 0), and save complete checkpoints together."""

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from grlhf.trainer.metrics import read_metrics

# Two steps of each phase on the tiny model; trainer.batch_size=4 rows are 2 pairs shown in both orders, one
# pair per process. The untrained judge's 24-token judgments never parse (every reward is 0, so every
# advantage is 0), hence a small entropy bonus: the GRM loss then depends on the sampled tokens.
ARGS = ["data.num_train=16", "data.num_eval=2", "rollout.n=2", "rollout.max_tokens=24", "trainer.batch_size=4",
        "algorithm.micro_batch_size=4", "sft.batch_size=4", "sft.micro_batch_size=4", "logging.progress=false",
        "logging.tensorboard=false", "trainer.stage=grm", "sft.answer_steps=0", "sft.steps=2", "trainer.steps=2",
        "checkpoint.every=1", "algorithm.entropy_coef=0.01"]
TIMEOUT = 420  # seconds per run; a process whose peer died waits for JAX's heartbeat timeout, then exits
COMPARED = ("loss", "grad_norm", "entropy", "kl", "pg_loss", "reward_mean", "response_length", "accuracy",
            "parse_failure_rate")


def _gloo_missing() -> str:
    """Why this jax cannot run CPU collectives across processes with gloo ('' when it can)."""
    import jax

    try:
        jax.config.jax_cpu_collectives_implementation  # noqa: B018
    except AttributeError:
        return "this jax has no jax_cpu_collectives_implementation option (no cross-process CPU collectives)"
    try:
        from jax._src.lib import _jax
    except ImportError:  # a jaxlib layout this check does not know: let the run itself tell
        return ""
    if not hasattr(_jax, "make_gloo_tcp_collectives"):
        return "this jaxlib was built without gloo CPU collectives (jax_cpu_collectives_implementation=gloo)"
    return ""


pytestmark = pytest.mark.skipif(bool(_gloo_missing()), reason=_gloo_missing() or "gloo available")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(run_dir: Path, cwd: Path, devices: int, *extra: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_COORDINATOR")}
    env.update(JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
               GRLHF_NO_PROGRESS="1", PYTHONPATH=os.pathsep.join([str(Path(__file__).parents[2]),
                                                                  env.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    cwd.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "grlhf.train", *ARGS, f"trainer.run_dir={run_dir}", *extra]
    return subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def _finish(processes: list[subprocess.Popen]) -> list[str]:
    """Waits for all (killing every process group when one fails or runs out of time); their outputs."""
    outputs = []
    try:
        for process in processes:
            out, _ = process.communicate(timeout=TIMEOUT)
            outputs.append(out)
            assert process.returncode == 0, f"rc={process.returncode}\n{out[-4000:]}"
    except BaseException:
        for process in processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        raise
    return outputs


def _rows(run_dir: Path) -> dict[tuple[str, int], dict]:
    rows = read_metrics(run_dir)
    keys = [(r["stage"], r["step"]) for r in rows]
    assert len(keys) == len(set(keys)), f"a step logged twice: {keys}"
    return dict(zip(keys, rows))


def _files(run_dir: Path) -> set[str]:
    return {str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if p.is_file()}


def _checkpoint_arrays(path: Path) -> list[np.ndarray]:
    import jax
    import orbax.checkpoint as ocp

    checkpointer = ocp.PyTreeCheckpointer()
    metadata = checkpointer.metadata(path)
    tree = getattr(metadata, "item_metadata", metadata)
    tree = getattr(tree, "tree", tree)
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
    return jax.tree.leaves(checkpointer.restore(path, restore_args=restore_args))


def test_two_processes_train_like_one_process_with_two_devices(tmp_path):
    from grlhf.tiny import cached_tiny_checkpoint

    cached_tiny_checkpoint()  # built once here, not raced for by the processes
    multi, single = tmp_path / "multi", tmp_path / "single"
    address = f"127.0.0.1:{_free_port()}"
    outputs = _finish([_start(multi, tmp_path / f"cwd{i}", 1, "distributed.enabled=true",
                              f"distributed.coordinator_address={address}", "distributed.num_processes=2",
                              f"distributed.process_id={i}") for i in range(2)])
    # the same global batch (and mesh shape) in one process with two devices
    _finish([_start(single, tmp_path / "cwd_single", 2)])

    # the summary is printed, and nothing is written outside the run directory, by process 0 only
    assert "{\n" in outputs[0] and "{\n" not in outputs[1], outputs[1][-2000:]
    assert json.loads(outputs[0][outputs[0].index("{\n"):])["model"] == str(multi / "hf" / "grm")
    assert [p for i in range(2) for p in (tmp_path / f"cwd{i}").iterdir()] == []

    got, expected = _rows(multi), _rows(single)
    assert sorted(got) == sorted(expected)
    for stage, steps in (("sft", [1, 2]), ("grm", [1, 2]), ("sft_eval", [0, 2]), ("grm_eval", [0, 2])):
        assert sorted(step for s, step in got if s == stage) == steps, stage
    assert got["grm", 1]["loss"] != 0 and got["grm", 2]["loss"] != 0  # the entropy bonus: not vacuous
    for key, row in got.items():
        for name in COMPARED:
            if name in row:  # fp32 reductions over the same 2-device mesh: identical in practice
                assert row[name] == pytest.approx(expected[key][name], rel=1e-6, abs=1e-9), (key, name)

    # the run directories hold the same files, except the checkpoints' per-process shards (process 1's)
    process_1 = {f for f in _files(multi) if "process_1" in f}
    assert process_1 and all(f.startswith("checkpoints/") for f in process_1)
    assert _files(multi) - process_1 - {f for f in _files(multi) if "/d/" in f} == \
        _files(single) - {f for f in _files(single) if "/d/" in f}
    for phase in ("sft", "grm"):
        for step in ("1", "2"):
            assert (multi / "checkpoints" / phase / step / "commit_success.txt").is_file(), (phase, step)
    saved, reference = (_checkpoint_arrays(d / "checkpoints" / "grm" / "2" / "state") for d in (multi, single))
    assert len(saved) == len(reference)
    for a, b in zip(saved, reference):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)

    from safetensors.numpy import load_file

    exported, expected_export = (load_file(d / "hf" / "grm" / "model.safetensors") for d in (multi, single))
    assert sorted(exported) == sorted(expected_export)
    for name, array in exported.items():
        np.testing.assert_allclose(array, expected_export[name], rtol=1e-5, atol=1e-7, err_msg=name)
