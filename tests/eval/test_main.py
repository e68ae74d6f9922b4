"""``python -m grlhf.eval`` end to end on the tiny checkpoint (JAX sampler) and small synthetic files: each
sub-command writes strict-JSON results, a table and its plots."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from grlhf.eval.__main__ import main

FAST = ["--max-tokens", "6", "--bootstrap", "20", "--template", "compact", "--length-buckets", "256"]


def strict_json(path: Path) -> dict:
    """results.json parsed with NaN / Infinity refused."""
    def refuse(token):
        raise AssertionError(f"non-strict JSON token {token} in {path}")
    return json.loads(path.read_text(), parse_constant=refuse)


def test_judge_on_two_sets_and_two_judges(eval_files, tmp_path, capsys):
    out = tmp_path / "judge"
    rc = main(["judge", "--judges", "warm=tiny", "rl=tiny", "--sets", f"aa={eval_files['pairs']}:align_anything",
               f"mapped={eval_files['pairs_jsonl']}:jsonl_pairs", "--fields", "mapped.question=prompt",
               "mapped.image=img", "mapped.chosen=better", "mapped.rejected=worse", "--out", str(out), *FAST])
    assert rc == 0
    results = strict_json(out / "results.json")
    assert set(results["results"]) == {"warm", "rl"}
    for name in ("aa", "mapped"):
        info = results["datasets"][name]
        assert info["rows_used"] == 3 and info["hash"].startswith("sha256:")
        m = results["results"]["warm"][name]
        assert m["pairs"] == 3 and m["cases"] == 6
        # each case is exactly one of correct, tie, parse failure or wrong
        assert m["accuracy"] <= 1 - m["tie_rate"] - m["parse_failure_rate"] + 1e-9
        assert m["position_bias"] == pytest.approx(m["accuracy_first"] - m["accuracy_second"])
    # the same model and the same files give the same numbers under two names
    assert results["results"]["warm"] == results["results"]["rl"]
    assert results["datasets"]["aa"]["hash"] != results["datasets"]["mapped"]["hash"]
    table = (out / "table.md").read_text()
    assert "| warm | aa | 3 |" in table and "| rl | mapped | 3 |" in table
    assert (out / "accuracy.png").stat().st_size > 0
    assert "results.json" in capsys.readouterr().out


def test_pointwise_table1(eval_files, tmp_path):
    out = tmp_path / "pointwise"
    assert main(["pointwise", "--judges", "grm=tiny", "--scores", str(eval_files["scores"]), "--out", str(out),
                 *FAST]) == 0
    results = strict_json(out / "results.json")
    grm = results["results"]["grm"]
    assert results["datasets"]["scores"]["questions"] == 2
    for way in ("grouped", "anchored"):
        assert grm[way]["answers"] == 6 and grm[way]["scored"] + grm[way]["unscored"] == 6
        assert grm[way]["pearson"] is None or -1 <= grm[way]["pearson"] <= 1
    assert "with grouped comparison (Pearson)" in (out / "table.md").read_text()


def test_policy_against_references_and_a_baseline(eval_files, tmp_path):
    out = tmp_path / "policy"
    args = ["policy", "--policies", "warm=tiny", "rl=tiny", "--benchmarks", f"toy={eval_files['prompts']}",
            "--fields", "toy.ground_truth=reference", "toy.category=category", "--judge", "tiny",
            "--answer-max-tokens", "4", *FAST]
    assert main([*args, "--out", str(out)]) == 0
    results = strict_json(out / "results.json")
    for policy in ("warm", "rl"):
        r = results["results"]["toy"][policy]
        assert r["prompts"] == 3 and r["judged"] + r["failures"] == 3
        assert set(r["categories"]) <= {"colour", "shape"}
        for key in ("self_praise_rate", "length_score_correlation", "judge_position_bias"):
            assert key in r
    table = (out / "table.md").read_text()
    assert "| policy | toy |" in table and "Reward-hacking monitors" in table
    assert main([*args, "--opponent", "warm", "--out", str(tmp_path / "baseline")]) == 0
    baseline = strict_json(tmp_path / "baseline" / "results.json")["results"]["toy"]
    assert set(baseline) == {"rl"}  # the baseline is not judged against itself


def test_bad_arguments_are_clear_errors(eval_files, tmp_path, capsys):
    rc = main(["policy", "--policies", "a=tiny", "--benchmarks", f"toy={eval_files['prompts']}", "--judge", "tiny",
               "--opponent", "nobody", "--out", str(tmp_path / "x"), *FAST])
    assert rc == 2 and "opponent 'nobody'" in capsys.readouterr().err
