"""Whole runs of ``python -m grlhf.train`` on the tiny model: smoke runs of ``sft`` and ``grm``, the run
directory's contents, and a run killed by a signal then resumed, which must log the same metrics as an
uninterrupted run."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from grlhf.trainer.metrics import read_metrics

# A few seconds of work per step: 2 pairs x 2 judgments of at most 24 tokens, 2 held-out pairs.
SMALL = ["data.num_train=16", "data.num_eval=2", "rollout.n=2", "rollout.max_tokens=24", "trainer.batch_size=2",
         "algorithm.micro_batch_size=4", "sft.batch_size=4", "sft.micro_batch_size=4", "logging.progress=false",
         "logging.tensorboard=false"]


def _train(args, run_dir: Path, **popen):
    env = dict(os.environ, GRLHF_NO_PROGRESS="1")
    command = [sys.executable, "-m", "grlhf.train", *SMALL, f"trainer.run_dir={run_dir}", *args]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen)


def _finish(process, timeout=600) -> str:
    out, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, out[-3000:]
    return out


def _rows(run_dir: Path, stage: str) -> dict[int, dict]:
    return {row["step"]: row for row in read_metrics(run_dir / "metrics.jsonl") if row["stage"] == stage}


def test_sft_then_grm_run_writes_a_complete_run_directory(tmp_path):
    run_dir = tmp_path / "run"
    out = _finish(_train(["trainer.stage=grm", "sft.answer_steps=2", "sft.steps=2", "trainer.steps=2",
                          "checkpoint.every=1"], run_dir))
    summary = json.loads(out[out.index("{\n"):])
    assert set(summary) >= {"warm_start", "rl", "model", "warm_start_model"}
    assert (run_dir / "config.yaml").is_file()
    sft, grm, evals = _rows(run_dir, "sft"), _rows(run_dir, "grm"), _rows(run_dir, "grm_eval")
    assert sorted(_rows(run_dir, "sft_answers")) == [1, 2]  # the direct answers' phase came first
    assert sorted(sft) == [1, 2] and sorted(grm) == [1, 2] and sorted(evals) == [0, 2]
    for key in ("loss", "reward_mean", "reward_std", "advantage_mean", "kl", "entropy", "clipfrac", "grad_norm", "lr",
                "response_length", "parse_failures", "step_time", "rollout_tokens_per_s", "logprob_diff_max"):
        assert key in grm[2], key
    assert grm[1]["logprob_diff_max"] < 1e-4  # the sampler's log-probs are the trainer's
    for key in ("accuracy", "accuracy_first", "accuracy_second", "position_bias", "parse_failure_rate"):
        assert key in evals[2]
    assert sorted(p.name for p in (run_dir / "checkpoints" / "grm").iterdir() if p.name.isdigit()) == ["1", "2"]
    samples = [r for r in read_metrics(run_dir / "samples.jsonl") if r["stage"] == "grm"]
    assert [r["step"] for r in samples] == [1, 1, 2, 2]  # logging.samples=2 per step
    assert all(r["preferred"] in (1, 2) and r["reward"] in (0.0, 1.0) and "Response 1" in r["prompt"] for r in samples)
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(run_dir / "hf" / "grm")
    assert model.config.model_type == "qwen2_vl"


def _wait_for(predicate, process, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        if process.poll() is not None:
            pytest.fail(f"the run ended before it could be killed:\n{process.stdout.read()[-3000:]}")
        time.sleep(0.2)
    pytest.fail("timed out waiting for the run")


def test_a_killed_run_resumes_to_the_same_metrics(tmp_path):
    args = ["trainer.stage=grm", "sft.answer_steps=0", "sft.steps=2", "trainer.steps=4", "checkpoint.every=1",
            "checkpoint.async_save=false"]
    reference = tmp_path / "reference"
    _finish(_train(args, reference))

    killed = tmp_path / "killed"
    process = _train(args, killed, start_new_session=True)
    checkpoint = killed / "checkpoints" / "grm" / "2"
    _wait_for(lambda: checkpoint.is_dir() and 2 in _rows(killed, "grm"), process)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert 4 not in _rows(killed, "grm")
    _finish(_train([*args, "trainer.resume=true"], killed))

    expected, resumed = _rows(reference, "grm"), _rows(killed, "grm")
    assert sorted(resumed) == [1, 2, 3, 4]
    for step in (3, 4):
        for key in ("loss", "reward_mean", "grad_norm", "kl", "entropy", "response_length", "lr"):
            assert resumed[step][key] == pytest.approx(expected[step][key], rel=1e-5, abs=1e-7), (step, key)
    assert _rows(killed, "grm_eval")[4]["accuracy"] == _rows(reference, "grm_eval")[4]["accuracy"]


def test_the_pipeline_smoke_run_writes_models_metrics_and_a_report(tmp_path):
    root = tmp_path / "pipeline"
    out = _finish(_train(["trainer.stage=pipeline", "sft.answer_steps=2", "sft.steps=2", "trainer.steps=2",
                          "checkpoint.every=1", "reward.judge_max_tokens=24", "rollout.n=3",
                          "algorithm.micro_batch_size=6", "pipeline.eval_scored_questions=2"], root))
    summary = json.loads(out[out.index("{\n"):])
    assert (root / "report.md").is_file() and summary["report"] == str(root / "report.md")
    report = (root / "report.md").read_text()
    assert "GRM held-out pairwise accuracy" in report and "policy true accuracy" in report
    assert (root / "reward.png").is_file() and (root / "grm_accuracy.png").is_file()
    for section in ("## Reward-hacking monitors", "## Judges on held-out pairs", "## Point-wise scoring",
                    "## Policies judged by the GRM+RL", "True accuracy by the right answer"):
        assert section in report, section
    by_answer = json.loads((root / "eval" / "policy" / "results.json").read_text())["results"]["held-out prompts"]
    for result in by_answer.values():  # the policy stage's held-out prompts, split by their right answers
        counts = [count for _, count in result["true_accuracy_by_answer"].values()]
        assert sum(counts) == result["prompts"] and set(result["true_accuracy_by_answer"]) <= {
            "red", "green", "blue", "yellow"}
    for name in ("judge", "pointwise", "policy"):
        assert json.loads((root / "eval" / name / "results.json").read_text())["command"] == name
    judged = json.loads((root / "eval" / "judge" / "results.json").read_text())["results"]["GRM+RL"]
    rows = {name: r for name, r in judged.items() if name.startswith("policy warm-start errors: ")}
    assert judged["policy warm-start errors"]["pairs"] == 2  # data.num_eval held-out prompts, one pair each
    assert rows and all(" > " in name for name in rows) and sum(r["pairs"] for r in rows.values()) == 2
    assert f"| GRM+RL | {next(iter(rows))} |" in report and "The set `policy warm-start errors` pairs" in report
    for stage, phases in (("grm", ("sft", "grm", "sft_answers")), ("policy", ("policy_sft", "policy"))):
        assert (root / stage / "config.yaml").is_file()
        rows = _rows(root / stage, phases[1])
        assert sorted(rows) == [1, 2]
        for phase in phases:
            assert (root / stage / "checkpoints" / phase / "2").is_dir()
    policy_rows = _rows(root / "policy", "policy")
    for key in ("reward_mean", "zero_std_groups", "judge_position_bias", "judge_calls", "judge_tokens",
                "response_length", "kl", "sample_true_accuracy", "self_praise_rate", "length_score_correlation"):
        assert key in policy_rows[2], key
    assert policy_rows[2]["judge_calls"] == 2 * 3 * 2 or policy_rows[2]["incomplete_answers"] > 0
    assert "true_accuracy" in _rows(root / "policy", "policy_eval")[2]
    samples = read_metrics(root / "policy" / "samples.jsonl")
    assert samples and {"question", "response", "reward", "true_quality"} <= set(samples[0])
    from omegaconf import OmegaConf

    policy_cfg = OmegaConf.load(root / "policy" / "config.yaml")  # the default: pipeline.policy_init=grm_warm_start
    assert policy_cfg.model.path == str(root / "grm" / "hf" / "sft")
    assert policy_cfg.reward.judge_path == str(root / "grm" / "hf" / "grm")
    from transformers import AutoModelForImageTextToText

    for model in (root / "grm" / "hf" / "grm", root / "policy" / "hf" / "policy"):
        assert AutoModelForImageTextToText.from_pretrained(model).config.model_type == "qwen2_vl"


def test_rm_run_exports_a_scored_model_that_stage_2_uses(tmp_path):
    rm_dir, policy_dir = tmp_path / "rm", tmp_path / "policy"
    _finish(_train(["trainer.stage=rm", "trainer.steps=2", "data.num_eval=4", "checkpoint.every=1"], rm_dir))
    steps, evals = _rows(rm_dir, "rm"), _rows(rm_dir, "rm_eval")
    assert sorted(steps) == [1, 2] and sorted(evals) == [0, 2]
    for key in ("loss", "accuracy", "margin", "grad_norm", "lr"):
        assert key in steps[2], key
    assert steps[2]["pairs"] == 2 and evals[2]["pairs"] == 4 and 0.0 <= evals[2]["accuracy"] <= 1.0
    assert evals[2]["margin"] != evals[0]["margin"]  # the model changed
    exported = rm_dir / "hf" / "rm"
    assert (exported / "score.safetensors").is_file()
    from transformers import AutoModelForImageTextToText

    assert AutoModelForImageTextToText.from_pretrained(exported).config.model_type == "qwen2_vl"
    _finish(_train(["trainer.stage=policy", "reward.source=rm", f"reward.rm_path={exported}", "sft.steps=0",
                    "trainer.steps=1", "trainer.export_hf=false"], policy_dir))
    assert "rm_calls" in _rows(policy_dir, "policy")[1]
