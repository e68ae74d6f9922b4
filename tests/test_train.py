"""``python -m grlhf.train``: user errors (config, YAML, paths, resume, data, weights, an unreachable judge)
exit 2 with one message naming the problem and no traceback; internal errors keep theirs; dry runs print."""

import subprocess
import sys
from pathlib import Path

import pytest

from grlhf.config import ConfigError, load_config, to_yaml
from grlhf.train import main


@pytest.mark.parametrize("args, message", [(["trainer.stpes=3"], "did you mean 'trainer.steps'"),
                                           (["trainer.steps=abc"], "trainer.steps"),
                                           (["trainer.steps"], "CONFIG.yaml or key=value")])
def test_bad_arguments_name_the_problem(args, message, capsys):
    assert main(args) == 2
    assert message in capsys.readouterr().err


def test_a_missing_model_directory_is_an_error_before_compiling(tmp_path, capsys):
    assert main([f"model.path={tmp_path / 'nowhere'}", f"trainer.run_dir={tmp_path / 'run'}"]) == 2
    assert "config.json not found" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_dry_run_of_the_paper_config_prints_counts_and_memory():
    result = subprocess.run([sys.executable, "-m", "grlhf.train", "configs/qwen2.5-vl-3b-grm.yaml",
                             "trainer.dry_run=true"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "3.755B" in result.stdout and "memory per device" in result.stdout


# ---- user errors: one message on stderr, exit 2, no traceback (issue 18) ------------------------------


def _error_of(args, capsys) -> str:
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("grlhf.train: ") and "Traceback" not in err
    return err


@pytest.mark.parametrize("text, message", [("trainer:\n  steps: [1\n", "is not valid YAML"),
                                           ("- trainer.steps=1\n", "the top level must be a mapping")])
def test_a_malformed_yaml_file_is_one_message_and_debug_shows_the_traceback(tmp_path, capsys, monkeypatch, text,
                                                                             message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    assert message in _error_of([str(path)], capsys)
    with pytest.raises(ConfigError, match=message):
        main([str(path), "--debug"])
    monkeypatch.setenv("GRLHF_DEBUG", "1")
    with pytest.raises(ConfigError, match=message):
        main([str(path)])


def test_an_internal_error_keeps_its_traceback(monkeypatch):
    import grlhf.trainer

    def broken(cfg, args):
        raise RuntimeError("an internal bug")

    monkeypatch.setattr(grlhf.trainer, "run", broken)
    with pytest.raises(RuntimeError, match="an internal bug"):
        main(["trainer.steps=1"])


def test_resuming_a_missing_run_directory_is_an_error_naming_it(tmp_path, capsys):
    err = _error_of(["trainer.resume=true", f"trainer.run_dir={tmp_path / 'typo'}"], capsys)
    assert f"the run directory {tmp_path / 'typo'}" in err and "does not exist" in err
    assert not (tmp_path / "typo").exists()  # nothing was trained


def test_resuming_with_a_changed_learning_rate_is_refused_and_the_first_config_kept(tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text(to_yaml(load_config(["trainer.stage=grm", f"trainer.run_dir={run_dir}"])))
    first = (run_dir / "config.yaml").read_text()
    err = _error_of(["trainer.stage=grm", f"trainer.run_dir={run_dir}", "trainer.resume=true", "optimizer.lr=1e-2"],
                    capsys)
    assert "optimizer.lr: 0.0001 -> 0.01" in err and "trainer.allow_config_change=true" in err
    assert (run_dir / "config.yaml").read_text() == first and sorted(p.name for p in run_dir.iterdir()) == [
        "config.yaml"]


def _pairs_parquet(path: Path, rows: int, bad: tuple[int, ...] = ()) -> Path:
    """Synthetic preference pairs as parquet (align_anything columns); the ``bad`` rows lose their question."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from grlhf.data import synthetic

    synthetic.export_parquet(synthetic.SyntheticConfig(seed=3, num_pairs=rows, image_size=28), str(path))
    table = pq.read_table(path)
    questions = [None if i in bad else q for i, q in enumerate(table.column("question").to_pylist())]
    pq.write_table(table.set_column(0, "question", pa.array(questions, pa.string())), path)
    return path


def test_bad_rows_are_skipped_and_counted_or_raised_and_num_eval_must_leave_rows(tmp_path, capsys):
    pairs = _pairs_parquet(tmp_path / "p.parquet", 6, bad=(1, 4))
    files = ["trainer.stage=grm", "data.source=files", f"data.train_files={pairs}",
             f"trainer.run_dir={tmp_path / 'run'}"]
    err = _error_of([*files, "data.num_eval=4"], capsys)  # 4 usable rows: none would be left to train on
    assert "data.num_eval=4 would hold out every usable row" in err and "has 4 usable" in err
    assert "6 rows read, 4 used, 2 dropped (missing_field: 2)" in err
    err = _error_of([*files, "data.num_eval=1", "data.on_bad_row=raise"], capsys)
    assert "p.parquet row 1: missing_field" in err
    assert not (tmp_path / "run").exists()


def test_weights_that_do_not_fit_their_config_are_named_in_the_hf_layout(tmp_path, capsys):
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    from grlhf.tiny import resolve_model_path

    model = tmp_path / "model"
    shutil.copytree(resolve_model_path("tiny", 0), model)
    tensors = load_file(model / "model.safetensors")
    out_features, in_features = tensors["model.layers.0.mlp.up_proj.weight"].shape
    tensors["model.layers.0.mlp.up_proj.weight"] = torch.zeros(out_features, in_features + 2)
    save_file(tensors, model / "model.safetensors")
    err = _error_of(["trainer.stage=grm", f"model.path={model}", f"trainer.run_dir={tmp_path / 'run'}"], capsys)
    assert (f"model.layers.0.mlp.up_proj.weight has shape ({out_features}, {in_features + 2}), but its config.json "
            f"makes it ({out_features}, {in_features})") in err


def test_an_unreachable_remote_judge_is_an_error_at_start(tmp_path, capsys):
    import socket

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    err = _error_of(["trainer.stage=policy", "sft.steps=0", "reward.judge_path=tiny", "reward.judge.backend=remote",
                     f"reward.judge.url=http://127.0.0.1:{port}", "data.num_train=4", "data.num_eval=0",
                     "trainer.batch_size=2", "rollout.n=2", "algorithm.micro_batch_size=4", "logging.progress=false",
                     "logging.tensorboard=false", f"trainer.run_dir={tmp_path / 'run'}"], capsys)
    assert f"remote judge http://127.0.0.1:{port} (reward.judge.url) does not answer" in err
