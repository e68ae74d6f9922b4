"""report.md: the reward-hacking monitors flag drift when they rise across steps; the evaluation's tables
are included."""

import json

from grlhf.trainer.metrics import METRICS_FILE
from grlhf.trainer.report import monitor_lines, write_report


def rows(praise, bias):
    return [{"stage": "policy", "step": i, "self_praise_rate": p, "judge_position_bias": b,
             "length_score_correlation": 0.1} for i, (p, b) in enumerate(zip(praise, bias))]


def test_a_rising_monitor_is_flagged_and_a_flat_one_is_not():
    lines = monitor_lines(rows([0.0, 0.0, 0.1, 0.3, 0.4, 0.5], [-2.0, 1.9, -2.0, 2.0, -1.9, 2.0]))
    praise = next(line for line in lines if line.startswith("| self-praise"))
    bias = next(line for line in lines if line.startswith("| judge position bias"))
    length = next(line for line in lines if line.startswith("| answer length"))
    assert "**rising**" in praise and "| 0.000 | 0.500 |" in praise
    assert "**rising**" not in bias  # large but steady in size
    assert length.endswith("| no |")


def test_the_report_holds_the_monitors_and_the_evaluation(tmp_path):
    (tmp_path / "policy").mkdir()
    (tmp_path / "policy" / METRICS_FILE).write_text(
        "".join(json.dumps(r) + "\n" for r in rows([0.0, 0.0, 0.6], [0.0, 0.0, 0.0])))
    evaluation = {"sections": ["## Judges on held-out pairs", "", "| judge | set |"], "timings": {"judge_s": 3.0}}
    text = write_report(tmp_path, {"time_s": 1.0, "evaluation": evaluation}).read_text()
    assert "## Reward-hacking monitors (policy RL)" in text and "**rising**" in text
    assert "## Judges on held-out pairs" in text and "judge 3 s" in text
    skipped = write_report(tmp_path, {"evaluation": {"skipped": "data.source=files"}}).read_text()
    assert "Evaluation skipped: data.source=files." in skipped
