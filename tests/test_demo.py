"""The end-to-end demo: grouped comparison with a biased, noisy simulated GRM trains the policy."""

import json

import numpy as np

from grlhf import demo


def test_policy_improves_and_bias_is_measured(tmp_path):
    cfg = demo.DemoConfig(steps=40, out_dir=str(tmp_path), judge_first_bias=2.0)
    history = demo.run(cfg, log=lambda _: None)
    first, last = history[0], history[-1]
    assert last["expected_quality"] > first["expected_quality"] + 0.5
    assert last["greedy_best_fraction"] > first["greedy_best_fraction"] + 0.2
    bias = np.mean([h["judge_first_minus_second"] for h in history])
    assert 1.0 < bias < 3.0  # the simulated GRM's 2-point bias is visible in the judgments ...
    assert 0.0 < np.mean([h["judge_invalid_fraction"] for h in history]) < 0.15  # ... malformed ones masked
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 40 and json.loads(lines[-1])["step"] == 40
    assert json.loads((tmp_path / "config.json").read_text())["judge_first_bias"] == 2.0


def test_simulated_judgments_request_one_order_when_asked():
    rng = np.random.default_rng(0)
    quality = np.array([[5.0, 5.0, 5.0]])
    samples = np.array([[0, 1, 2]])
    cfg = demo.DemoConfig(both_orders=False, judge_malformed=0.0)
    _, valid, requested = demo.simulated_judgments(quality, samples, cfg, rng)
    np.testing.assert_array_equal(requested, np.triu(np.ones((3, 3), bool), 1))
    np.testing.assert_array_equal(valid[0], requested)
