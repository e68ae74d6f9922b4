"""``experiment=n_scaling``: the mean and 95% interval over seeds (hand values), the table, and a whole
tiny run with two seeds, two n and the three arms."""

import json

import pytest

from grlhf.trainer.experiments import markdown_table, mean_interval, summarise
from tests.trainer.test_runs import _finish, _rows, _train


def test_mean_interval_is_the_student_t_interval():
    result = mean_interval([1.0, 2.0, 3.0])  # sd 1, se 1/sqrt(3), t(0.975, 2 df) = 4.302653
    half = 4.302653 / 3 ** 0.5
    assert result["mean"] == 2.0 and result["n"] == 3
    assert result["low"] == pytest.approx(2.0 - half, abs=1e-6) and result["high"] == pytest.approx(2.0 + half, abs=1e-6)
    assert mean_interval([0.25]) == {"mean": 0.25, "low": None, "high": None, "n": 1}
    same = mean_interval([0.5, 0.5])
    assert same["low"] == same["high"] == 0.5
    with pytest.raises(ValueError, match="no values"):
        mean_interval([])


def test_summary_table_has_a_row_per_arm_and_a_column_per_n():
    summary = summarise({"grm": {2: [0.1, 0.3], 3: [0.2, 0.2]}, "rm": {2: [0.0], 3: [-0.1]}})
    assert summary["grm"]["2"]["gains"] == [0.1, 0.3] and summary["grm"]["2"]["mean"] == pytest.approx(0.2)
    table = markdown_table(summary, [2, 3]).splitlines()
    assert table[0] == "| arm | n = 2 | n = 3 |"
    assert table[2].startswith("| grouped comparison | +0.200 [") and table[3] == "| score-only RM | +0.000 | -0.100 |"


def test_n_scaling_with_seeds_summarises_every_arm_and_n(tmp_path):
    root = tmp_path / "nscale"
    out = _finish(_train(["experiment=n_scaling", "experiment.n_values=[2,3]", "experiment.seeds=[0,1]",
                          "reward.judge_path=tiny", "sft.steps=1", "trainer.steps=1", "trainer.export_hf=true",
                          "reward.judge_max_tokens=8", "rollout.max_tokens=8"], root), timeout=1500)
    result = json.loads((root / "n_scaling.json").read_text())
    assert result["seeds"] == [0, 1] and set(result["gain"]) == {"grm", "grm_single", "rm"}
    for arm, by_n in result["gain"].items():
        assert sorted(by_n) == ["2", "3"]
        for n, cell in by_n.items():
            assert len(cell["gains"]) == 2 and cell["low"] <= cell["mean"] <= cell["high"]
            for seed in (0, 1):  # one stage-2 run per arm, n and seed, with its own seed
                run = root / f"{arm}-n{n}-s{seed}"
                assert sorted(_rows(run, "policy")) == [1] and f"seed: {seed}" in (run / "config.yaml").read_text()
    assert _rows(root / "grm-n3-s0", "policy")[1]["judge_calls"] <= 2 * 3 * 2  # both orders of 3 answers, 2 prompts
    assert "rm_calls" in _rows(root / "rm-n2-s1", "policy")[1]
    assert (root / "rm" / "hf" / "rm" / "score.safetensors").is_file()
    assert (root / "n_scaling.png").stat().st_size > 1000 and "score-only RM" in (root / "n_scaling.md").read_text()
    assert '"gain"' in out
