"""``python -m grlhf.train``: configuration errors exit with a message naming the problem; dry runs print."""

import subprocess
import sys

import pytest

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
