"""MetricsLogger: strict JSON lines, scalar conversion, non-finite values, truncation, TensorBoard events."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from tensorboardX.proto.event_pb2 import Event

from grlhf.trainer.metrics import MetricsLogger, read_metrics, truncate_metrics


def _events(run_dir: Path) -> list[Event]:
    """All events of the TensorBoard event files under ``run_dir/tensorboard`` (TFRecord framing)."""
    events = []
    for path in sorted((run_dir / "tensorboard").glob("events.out.tfevents.*")):
        data = path.read_bytes()
        offset = 0
        while offset < len(data):
            (length,) = struct.unpack_from("<Q", data, offset)
            offset += 12  # length + its masked crc
            events.append(Event.FromString(data[offset : offset + length]))
            offset += length + 4  # data + its masked crc
    return events


def _scalars(run_dir: Path) -> dict[tuple[str, int], float]:
    return {(v.tag, e.step): v.simple_value for e in _events(run_dir) if e.HasField("summary") for v in e.summary.value}


def test_jsonl_lines(tmp_path):
    with MetricsLogger(tmp_path, total_steps=3, tensorboard=False, progress=False) as logger:
        logger.log(1, {"loss": 0.5, "n": 3}, stage="sft")
        logger.log(2, {"loss": 0.25})
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2
    rows = [json.loads(line) for line in lines]
    assert rows[0]["step"] == 1 and rows[0]["stage"] == "sft" and rows[0]["loss"] == 0.5 and rows[0]["n"] == 3
    assert rows[1]["step"] == 2 and rows[1]["stage"] == "" and rows[1]["loss"] == 0.25
    assert all(isinstance(row["time"], float) for row in rows)
    assert "nonfinite" not in rows[0]
    assert read_metrics(tmp_path) == rows == read_metrics(tmp_path / "metrics.jsonl")


def test_numpy_and_jax_scalars(tmp_path):
    with MetricsLogger(tmp_path, total_steps=1, tensorboard=False, progress=False) as logger:
        logger.log(np.int64(1), {"a": np.float32(1.5), "b": np.int32(7), "c": jnp.float32(2.5), "d": jnp.array(3),
                                 "e": jnp.array([4.0]), "f": np.bool_(True)})
    (row,) = read_metrics(tmp_path)
    assert row["step"] == 1
    assert row["a"] == 1.5 and row["b"] == 7 and row["c"] == 2.5 and row["d"] == 3 and row["e"] == 4.0
    assert type(row["b"]) is int and type(row["d"]) is int and row["f"] is True
    with MetricsLogger(tmp_path, total_steps=1, tensorboard=False, progress=False) as logger:
        with pytest.raises(ValueError, match="scalars"):
            logger.log(2, {"v": np.zeros(3)})


def test_nonfinite_written_as_null(tmp_path):
    with MetricsLogger(tmp_path, total_steps=1, progress=False) as logger:
        logger.log(1, {"loss": float("nan"), "grad_norm": np.float32(np.inf), "kl": jnp.float32(-jnp.inf), "ok": 1.0})
    line = (tmp_path / "metrics.jsonl").read_text().strip()
    row = json.loads(line, parse_constant=lambda name: pytest.fail(f"non-strict JSON constant {name}"))
    assert row["loss"] is None and row["grad_norm"] is None and row["kl"] is None and row["ok"] == 1.0
    assert row["nonfinite"] == ["loss", "grad_norm", "kl"]
    assert set(_scalars(tmp_path)) == {("ok", 1)}  # non-finite values are not sent to TensorBoard


def test_appends_on_resume_and_truncate(tmp_path):
    with MetricsLogger(tmp_path, total_steps=6, tensorboard=False, progress=False) as logger:
        for step in range(1, 5):
            logger.log(step, {"loss": step}, stage="sft")
        logger.log(2, {"reward_mean": 0.1}, stage="rl")
        logger.log(3, {"reward_mean": 0.2}, stage="rl")
    assert truncate_metrics(tmp_path, 2, stage="sft") == 2
    assert [(r["stage"], r["step"]) for r in read_metrics(tmp_path)] == [("sft", 1), ("sft", 2), ("rl", 2), ("rl", 3)]
    assert truncate_metrics(tmp_path, 2) == 1
    assert truncate_metrics(tmp_path, 2) == 0
    with MetricsLogger(tmp_path, total_steps=6, tensorboard=False, progress=False, start_step=2) as logger:
        logger.log(3, {"loss": 3.0}, stage="sft")
    assert [(r["stage"], r["step"]) for r in read_metrics(tmp_path)] == [("sft", 1), ("sft", 2), ("rl", 2), ("sft", 3)]
    assert truncate_metrics(tmp_path / "missing", 0) == 0 and read_metrics(tmp_path / "missing") == []


def test_truncate_drops_partial_last_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "stage": ""}\n{"step": 2, "sta')
    assert truncate_metrics(path, 5) == 1
    assert read_metrics(path) == [{"step": 1, "stage": ""}]


def test_not_main_writes_nothing(tmp_path):
    run_dir = tmp_path / "run"
    with MetricsLogger(run_dir, total_steps=2, is_main=False) as logger:
        logger.log(1, {"loss": 1.0})
        logger.set_progress(2)
    assert not run_dir.exists()


def test_tensorboard_scalars(tmp_path):
    with MetricsLogger(tmp_path, total_steps=3, jsonl=False, progress=False) as logger:
        logger.log(1, {"loss": 0.5, "note": "text", "flag": True}, stage="rl")
        logger.log(2, {"loss": np.float32(0.25), "count": 4})
    assert not (tmp_path / "metrics.jsonl").exists()
    scalars = _scalars(tmp_path)
    assert scalars == {("rl/loss", 1): 0.5, ("loss", 2): 0.25, ("count", 2): 4.0}


def test_progress_bar(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("GRLHF_NO_PROGRESS", raising=False)
    with MetricsLogger(tmp_path, total_steps=10, jsonl=False, tensorboard=False, desc="grm") as logger:
        logger.log(3, {"loss": 0.125, "other": 1.0})
        logger.set_progress(0, total_steps=5, desc="rl")
        logger.set_progress(5)
    err = capsys.readouterr().err
    assert "grm" in err and "loss=0.125" in err and "other" not in err and "rl" in err and "5/5" in err
    monkeypatch.setenv("GRLHF_NO_PROGRESS", "1")
    with MetricsLogger(tmp_path, total_steps=10, jsonl=False, tensorboard=False) as logger:
        logger.log(1, {"loss": 1.0})
    assert capsys.readouterr().err == ""
