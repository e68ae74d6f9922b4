"""The RL learner, one loop for both stages: a step with a scripted generator and reward (what it asks for,
what it logs, the weight sync), KL in the reward against a hand computation, and the fixed / adaptive
coefficient it carries from step to step."""

import threading
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx
from PIL import Image

from grlhf.config import load_config
from grlhf.data.batching import encode_micro_batches
from grlhf.data.conversations import prompt_conversation
from grlhf.data.iteration import EpochIterator
from grlhf.data.loaders import Prompt
from grlhf.reward.base import Rewards
from grlhf.rl.kl import kl_penalty
from grlhf.rollout.base import Completion
from grlhf.trainer.batches import supervised_batches
from grlhf.trainer.learners import (Budget, EncodeAhead, RLTask, Roles, new_phase, penalise_kl, rl_phase,
                                    supervised_phase)
from grlhf.trainer.loop import run_phase
from grlhf.trainer.runs import start_run
from grlhf.trainer.step import LossConfig, TrainBatch
from tests.trainer.test_roles import _Follower

TINY = ["data.num_train=8", "data.num_eval=0", "rollout.n=2", "rollout.max_tokens=8", "trainer.batch_size=2",
        "algorithm.micro_batch_size=4", "logging.progress=false", "logging.tensorboard=false", "logging.jsonl=false",
        "logging.samples=1"]


def _kl_batches(kl_type: str):
    rng = np.random.default_rng(0)
    mask = np.array([[0, 1, 1, 1], [0, 0, 1, 0], [0, 1, 1, 0]], np.float32)
    old, ref = rng.normal(-2, 0.5, mask.shape).astype(np.float32), rng.normal(-2, 0.5, mask.shape).astype(np.float32)
    batches = [TrainBatch(None, mask[:2], old_logprobs=old[:2], ref_logprobs=ref[:2]),
               TrainBatch(None, mask[2:], old_logprobs=old[2:], ref_logprobs=ref[2:])]
    kl = np.asarray(kl_penalty(old, ref, kl_type)) * mask
    return batches, kl, mask


@pytest.mark.parametrize("kl_type", ["kl", "low_var_kl"])
def test_kl_in_the_reward_subtracts_coef_times_each_sequences_kl_sum(kl_type):
    cfg = load_config([f"algorithm.kl_in_reward.kl_type={kl_type}", "algorithm.kl_in_reward.enabled=true",
                       "algorithm.kl_in_reward.coef=0.3"])
    batches, kl, mask = _kl_batches(kl_type)
    scores = np.array([1.0, 0.0, 0.5], np.float32)
    carry = {"kl_coef": 0.7}  # e.g. restored from a run with another coef: a fixed coefficient is the config's
    rewards, metrics = penalise_kl(cfg, batches, scores, carry)
    np.testing.assert_allclose(rewards, scores - 0.3 * kl.sum(-1), rtol=1e-6)
    np.testing.assert_allclose(metrics["reward_kl"], np.mean(kl.sum(-1) / mask.sum(-1)), rtol=1e-6)
    assert metrics["reward_kl_coef"] == 0.3 and carry["kl_coef"] == 0.3  # fixed: the coefficient stays


def test_the_adaptive_coefficient_moves_towards_the_target_and_is_carried():
    cfg = load_config(["algorithm.kl_in_reward.enabled=true", "algorithm.kl_in_reward.type=adaptive",
                       "algorithm.kl_in_reward.target_kl=1e-6", "algorithm.kl_in_reward.horizon=10"])
    batches, _, _ = _kl_batches("kl")
    carry = {"kl_coef": 0.2}
    penalise_kl(cfg, batches, np.zeros(3, np.float32), carry)
    # KL far above the target: the error clips at +0.2, so coef * (1 + 0.2 * 3 sequences / 10 steps)
    assert carry["kl_coef"] == pytest.approx(0.2 * (1 + 0.2 * 3 / 10))


class _ScriptedGenerator(_Follower):
    """Answers every request with ``n`` fixed completions and records what it was asked."""

    def __init__(self, token_id: int):
        super().__init__()
        self.token_id, self.asked = token_id, []

    def generate(self, requests, sampling):
        self.asked.append((len(requests), sampling.n, sampling.seed))
        return [[Completion([self.token_id], [-1.0], f"answer {i}", "stop") for i in range(sampling.n)]
                for _ in requests]

    def metrics(self):
        return {"scripted_calls": float(len(self.asked))}


class _IndexReward:
    """Reward i for the i-th completion of each request."""

    def __call__(self, requests, completions, *, rng, step):
        return Rewards(np.tile(np.arange(len(completions[0]), dtype=np.float32), len(requests)), {"scored": 1.0})


def test_one_rl_step_rolls_out_scores_updates_syncs_and_logs(tmp_path: Path):
    cfg = load_config([*TINY, f"trainer.run_dir={tmp_path}", "algorithm.kl_in_reward.enabled=true",
                       "algorithm.kl_coef=0"])
    run = start_run(cfg, 1)
    eos = run.processor.tokenizer.eos_token_id
    generator = _ScriptedGenerator(eos)
    prompts = [Prompt(str(i), Image.new("RGB", (28, 28)), f"question {i}") for i in range(4)]
    task = RLTask("policy", prompts, lambda items, rng: items, _IndexReward())
    before = _params(run.model)
    phase = rl_phase(run, Roles(run.model, generator, reference=nnx.clone(run.model)), task,
                     Budget(1, 2, 1e-3, 0.0, 0))
    metrics = phase.step_fn(0)
    run.logger.close()
    assert generator.asked == [(2, 2, generator.asked[0][2])]  # 2 prompts of the batch, n = 2 each
    assert generator.models == [run.model]  # the actor was pushed once, after the update
    assert metrics["reward_mean"] == 0.5 and metrics["scored"] == 1.0 and metrics["scripted_calls"] == 1.0
    assert metrics["reward_kl"] == 0.0 and metrics["reward_kl_coef"] == cfg.algorithm.kl_in_reward.coef
    assert metrics["advantage_max"] > 0 > metrics["advantage_min"] and metrics["updates"] == 1.0
    assert [s["response"] for s in metrics["samples"]] == ["answer 0"] and "question" in metrics["samples"][0]
    assert phase.carry == {"kl_coef": cfg.algorithm.kl_in_reward.coef}
    assert any(not np.array_equal(a, b) for a, b in zip(before, _params(run.model)))  # the update applied


def _params(model) -> list[np.ndarray]:
    return [np.asarray(leaf) for leaf in jax.tree.leaves(nnx.state(model, nnx.Param))]


def test_a_phases_carried_values_are_checkpointed_and_restored_on_resume(tmp_path: Path):
    """The adaptive KL coefficient lives in ``Phase.carry``: a resumed run continues from the saved value."""
    def counting(phase, optimizer, indices, step):
        phase.carry["kl_coef"] = phase.carry.get("kl_coef", 1.0) * 2
        return {"coef": phase.carry["kl_coef"]}

    args = [*TINY, f"trainer.run_dir={tmp_path}", "checkpoint.every=1", "checkpoint.async_save=false"]
    run = start_run(load_config(args), 2)
    first = new_phase(run, "policy", Budget(2, 2, 1e-3, 0.0, 0), 8, counting)
    run_phase(run, first)
    run.logger.close()
    assert first.carry == {"kl_coef": 4.0}
    run = start_run(load_config([*args, "trainer.resume=true"]), 3)
    resumed = new_phase(run, "policy", Budget(3, 2, 1e-3, 0.0, 0), 8, counting)
    run_phase(run, resumed)  # restores step 2 and its carry, then runs step 3
    run.logger.close()
    assert resumed.carry == {"kl_coef": 8.0}


def test_encode_ahead_uses_the_prefetched_batch_only_for_the_same_indices():
    calls = []

    def encode(items):
        calls.append((tuple(items), threading.current_thread() is threading.main_thread()))
        if "bad" in items:
            raise ValueError("unreadable item")
        return [f"batch of {items}"]

    ahead = EncodeAhead(encode, ["a", "b", "c", "bad"])
    assert ahead.take([0, 1]) == ["batch of ['a', 'b']"] and calls[-1][1]  # nothing ahead: encoded here
    ahead.start([2])
    ahead.wait()
    assert calls[-1] == (("c",), False)  # on the worker thread
    assert ahead.take([2]) == ["batch of ['c']"] and len(calls) == 2  # taken, not encoded again
    ahead.start([2])
    assert ahead.take([0]) == ["batch of ['a']"]  # another step's indices: encoded again, here
    ahead.start([3])
    ahead.wait()
    with pytest.raises(ValueError, match="unreadable item"):
        ahead.take([3])  # the worker's error, raised at the step that needed its batch


def test_a_supervised_phase_encodes_each_step_once_and_the_next_one_ahead(tmp_path: Path):
    encoded, real = [], []

    def encode(items):
        encoded.append((list(items), threading.current_thread() is threading.main_thread()))
        return real[0]

    run = start_run(load_config([*TINY, f"trainer.run_dir={tmp_path}", "checkpoint.every=0"]), 2)
    image = Image.new("RGB", (56, 56), "red")
    host = encode_micro_batches(run.processor, [prompt_conversation("What colour?", image)] * 2, ["red", "red"], 2)
    real.append(supervised_batches(run.model, host))
    items = list(range(8))
    phase = supervised_phase(run, "sft", Budget(3, 2, 1e-3, 0.0, 0), items, encode, LossConfig(kind="sft"))
    run_phase(run, phase)
    run.logger.close()
    assert len(encoded) == 3  # one encoding per step, none past the last
    assert encoded[0][1] and not encoded[1][1] and not encoded[2][1]  # steps 2 and 3 were encoded ahead
    order = EpochIterator(8, 2, seed=run.cfg.data.seed).epoch_order(0).reshape(-1, 2)[:3].tolist()
    assert [items for items, _ in encoded] == order  # the iterator's batches, in its order


def test_supervised_and_rl_phases_take_their_own_schedules(tmp_path: Path):
    """``sft.schedule`` shapes the supervised phases' learning rate, ``optimizer.schedule`` RL's: a constant
    RL schedule stays at its peak to the last step while the warm start's cosine decays."""
    from grlhf.trainer.stages import rl_budget, sft_budget

    cfg = load_config([*TINY, f"trainer.run_dir={tmp_path}", "optimizer.schedule=constant", "sft.steps=4",
                       "sft.lr=1e-3", "sft.warmup_ratio=0", "sft.batch_size=2", "sft.micro_batch_size=2", "optimizer.lr=2e-3", "optimizer.warmup_ratio=0",
                       "trainer.steps=4"])
    assert (sft_budget(cfg).schedule, rl_budget(cfg, 8, 2).schedule) == ("cosine", "constant")
    run = start_run(cfg, 2)
    lrs = {}
    for name, budget in (("sft", sft_budget(cfg)), ("policy", rl_budget(cfg, 8, 2))):
        phase = new_phase(run, name, budget, 8, lambda phase, optimizer, indices, step: {})
        lrs[name] = [phase.step_fn(i)["lr"] for i in range(4)]
    run.logger.close()
    assert lrs["policy"] == pytest.approx([2e-3] * 4)
    assert lrs["sft"][0] == pytest.approx(1e-3) and lrs["sft"][3] < 0.2e-3
