"""A short stage-2 run with vLLM for the policy's rollouts and for the judge (``rollout.backend=vllm
reward.judge.backend=vllm``): it completes, judges every complete answer and pushes the weights again after
each update (the syncs it logs).

Skipped without vLLM, except under CI (``CI`` set), where a missing vLLM is a failure.
"""

from tests.rollout.test_vllm_engine import require_vllm
from tests.trainer.test_runs import _finish, _rows, _train

# every token stops an answer, so the untrained policy's answers are complete and the judge sees them
EVERY_TOKEN_STOPS = "rollout.stop_token_ids=[" + ",".join(map(str, range(512))) + "]"
VLLM = ["rollout.backend=vllm", "reward.judge.backend=vllm", "rollout.vllm.kv_cache_gib=0.25",
        "rollout.vllm.max_model_len=1024", "rollout.vllm.max_num_seqs=16", "rollout.vllm.verify_sync=true"]


def test_a_policy_run_with_vllm_rollouts_and_judge_completes(tmp_path):
    require_vllm()
    run_dir = tmp_path / "policy"
    args = ["trainer.stage=policy", "reward.judge_path=tiny", "sft.steps=0", "trainer.steps=2",
            "reward.judge_max_tokens=16", "trainer.export_hf=false", EVERY_TOKEN_STOPS, *VLLM]
    out = _finish(_train(args, run_dir), timeout=900)
    rows = _rows(run_dir, "policy")
    assert sorted(rows) == [1, 2], out[-2000:]
    for row in rows.values():
        assert row["judge_calls"] == 2 * 2  # 2 prompts x 2 ordered pairs of 2 answers
        assert row["rollout_tokens_per_s"] > 0
    # the engine starts from the model directory and is given the model once; then Roles.sync_weights pushes
    # after every update (cumulative counts, read after the step's sync), and nothing is exported for it
    syncs = {step: row["weight_syncs"] for step, row in rows.items()}
    assert syncs == {1: 2, 2: 3}, syncs
    assert rows[2]["judge_weight_syncs"] == 0  # the judge engine follows no model
    assert not (run_dir / "hf").exists()
