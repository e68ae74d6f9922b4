"""``python -m grlhf.demo``: key=value overrides, errors that name the bad key."""

import subprocess
import sys

import pytest

from grlhf.demo import main, parse_overrides
from grlhf.errors import UserError


def test_overrides_are_typed():
    cfg = parse_overrides(["steps=3", "both_orders=false", "lr=0.1"])
    assert cfg.steps == 3 and cfg.both_orders is False and cfg.lr == 0.1


@pytest.mark.parametrize("args,message", [(["stepz=3"], "Did you mean: 'steps'"), (["steps=abc"], "steps"),
                                          (["steps"], "expected key=value")])
def test_bad_arguments_name_the_problem(args, message, capsys):
    with pytest.raises(UserError, match=message):
        parse_overrides(args)
    assert main(args) == 2  # one line on stderr, no traceback
    err = capsys.readouterr().err
    assert err.startswith("grlhf.demo: ") and message in err and "Traceback" not in err


def test_module_entry_point(tmp_path):
    result = subprocess.run([sys.executable, "-m", "grlhf.demo", "steps=1", f"out_dir={tmp_path}"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "metrics.jsonl").exists() and "done: expected quality" in result.stdout
