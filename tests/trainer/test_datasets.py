"""A stage's data from the config: principles reach the judge prompt, and on real preference files GRM+SFT
trains on verdict targets while a row too long to batch is skipped and counted (a whole run)."""

import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from grlhf.config import ConfigError, load_config
from grlhf.data import synthetic
from grlhf.reward.prompt import judge_template
from grlhf.reward.verdicts import judge_case
from grlhf.trainer.datasets import stage_data, synthetic_config
from grlhf.trainer.metrics import read_metrics

SMALL = ["data.num_train=8", "data.num_eval=2", "reward.template=compact"]


def _prompt_text(case) -> str:
    return "".join(part.get("text", "") for part in case.conversation[0]["content"] if part["type"] == "text")


def test_configured_principles_reach_the_judge_prompt_only_with_reward_principles(tmp_path):
    rules = tmp_path / "principles.md"
    rules.write_text("Name the exact colour.\n")
    template = judge_template("compact")
    texts = {}
    for flag in ("true", "false"):
        cfg = load_config([*SMALL, f"data.principles_file={rules}", f"reward.principles={flag}"])
        pair = stage_data(cfg).train[0]
        texts[flag] = _prompt_text(judge_case(pair, False, template=template, principles=cfg.reward.principles))
    assert texts["true"] != texts["false"]
    assert "Name the exact colour." in texts["true"] and "Name the exact colour." not in texts["false"]
    with pytest.raises(ConfigError, match="data.principles"):
        load_config([*SMALL, "reward.principles=true"])  # nothing to show: the ablation would be a no-op


def _png(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def write_align_anything(path, count: int, long_row: int):
    """Synthetic pairs in Align-Anything's columns (HF Image struct, ``overall_response`` in {1, 2}), with
    a per-row principle, per-response scores, and one question far over the prompt limit."""
    scfg = synthetic_config(load_config(SMALL))
    rows = []
    for i in range(count):
        item = synthetic.preference_pair(scfg, i)
        better_first = item["overall_response"] == 1
        rows.append({"question": item["question"] + (" Explain." * 400 if i == long_row else ""),
                     "image": {"bytes": _png(item["image"]), "path": None},
                     "response_1": item["response_1"], "response_2": item["response_2"],
                     "overall_response": item["overall_response"], "rationale": "Prefer the right colour.",
                     "score_1": 9 if better_first else 2, "score_2": 2 if better_first else 9})
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    columns = {key: pa.array([r[key] for r in rows], type=image_type if key == "image" else None) for key in rows[0]}
    pq.write_table(pa.table(columns), path)
    return path


def test_grm_sft_then_rl_on_a_preference_file_skips_the_over_long_row(tmp_path):
    from grlhf.trainer.stages import run_stage

    data = write_align_anything(tmp_path / "train.parquet", count=10, long_row=3)
    run_dir = tmp_path / "run"
    cfg = load_config([
        "trainer.stage=grm", "data.source=files", f"data.train_files={data}", "data.format=align_anything",
        "data.num_eval=2", "data.principles=Judge the colour.", "data.principles_field=rationale",
        "data.score_fields=[score_1,score_2]", "data.max_prompt_length=400", "reward.template=compact",
        "sft.steps=4", "sft.answer_steps=3", "sft.batch_size=4", "sft.micro_batch_size=4", "sft.lr=2e-3",
        "trainer.steps=1",
        "trainer.batch_size=2", "rollout.n=2", "rollout.max_tokens=16", "algorithm.micro_batch_size=4",
        "trainer.export_hf=false", "logging.progress=false", "logging.tensorboard=false",
        f"trainer.run_dir={run_dir}"])
    summary = run_stage(cfg)
    counts = summary["data"]["train"]
    assert counts["rows_read"] == 10 and counts["rows_used"] == 9
    assert counts["dropped_by_reason"] == {"prompt_too_long": 1}
    assert json.loads((run_dir / "data.json").read_text()) == summary["data"]
    rows = read_metrics(run_dir / "metrics.jsonl")
    sft = [r["loss"] for r in rows if r["stage"] == "sft"]
    assert len(sft) == 4 and sft[-1] < sft[0]  # the verdict targets are learnt
    assert not [r for r in rows if r["stage"] == "sft_answers"]  # files have no direct answers: left out
    assert [r["step"] for r in rows if r["stage"] == "grm"] == [1]
    assert summary["rl"]["pairs"] == 2  # held out: the last two usable pairs


def test_data_preference_field_picks_the_beavertails_v_label(tmp_path):
    """The two BeaverTails-V labels disagree on rows 0 and 2: each setting trains on its own chosen answers."""
    image = {"bytes": _png(synthetic.preference_pair(synthetic_config(load_config(SMALL)), 0)["image"]), "path": None}
    labels = [(1, 2), (2, 2), (2, 1), (1, 1)]  # (safer_response_id, more_helpful_response_id)
    rows = [{"question": f"q{i}", "image": image, "category": "c", "response_1": f"a{i}", "response_2": f"b{i}",
             "safer_response_id": safer, "more_helpful_response_id": helpful}
            for i, (safer, helpful) in enumerate(labels)]
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    path = tmp_path / "bv.parquet"
    pq.write_table(pa.table({k: pa.array([r[k] for r in rows], type=image_type if k == "image" else None)
                             for k in rows[0]}), path)
    base = ["trainer.stage=grm", "data.source=files", f"data.train_files={path}", "data.format=beavertails_v",
            "data.num_eval=1"]
    chosen = {}
    for field in ("more_helpful_response_id", "safer_response_id"):
        data = stage_data(load_config([*base, f"data.preference_field={field}"]))
        chosen[field] = [p.chosen for p in [*data.train, *data.held_out]]
    assert chosen["more_helpful_response_id"] == ["b0", "b1", "a2", "a3"]
    assert chosen["safer_response_id"] == ["a0", "b1", "b2", "a3"]
    assert stage_data(load_config(base)).train[0].chosen == "b0"  # the default: helpfulness
    with pytest.raises(ConfigError, match="data.preference_field"):
        load_config([*base, "data.preference_field=better_response_id"])


def test_the_policy_error_cycle_reaches_the_synthetic_task_and_a_bad_one_is_refused():
    cycle = ["red", "blue", "green", "yellow"]
    scfg = synthetic_config(load_config(["data.policy_error_mode=derangement",
                                         f"data.policy_error_cycle=[{','.join(cycle)}]"]))
    assert scfg.policy_error_mode == "derangement" and scfg.policy_error_cycle == tuple(cycle)
    with pytest.raises(ConfigError, match="data.policy_error_cycle must list each of"):
        load_config(["data.policy_error_cycle=[red,blue]"])
