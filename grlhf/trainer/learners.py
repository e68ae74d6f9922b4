"""The two learners every stage is made of: the RL learner and the supervised learner.

RL step (written once; stage 1 and stage 2 differ only in their ``RLTask``): a batch of items ->
``task.requests`` -> ``rollout.generate`` (n completions each) -> ``task.reward`` -> (KL in the reward,
optional) -> group advantages -> ``ppo_epochs`` passes of PPO updates over mini-batches ->
``roles.sync_weights()``. Supervised step (GRM warm start, policy warm start, the score-only RM): a batch
of items -> ``encode`` -> device micro-batches -> one exact update. ``run_phase`` (``loop.py``) drives
either, with evaluation, metrics and checkpoints.
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from grlhf.config import Config
from grlhf.data.batching import encode_micro_batches
from grlhf.data.iteration import EpochIterator
from grlhf.models.qwen_vl.sharding import place_state, to_host
from grlhf.reward.base import Reward
from grlhf.rl.advantages import group_advantages
from grlhf.rl.kl_control import KLController, sequence_kl_penalty
from grlhf.rollout.base import Completion, Generator, SamplingParams, WeightFollower
from grlhf.trainer.batches import place, rl_batches
from grlhf.trainer.distributed import gather_indices
from grlhf.trainer.loop import Phase
from grlhf.trainer.optim import make_optimizer
from grlhf.trainer.runs import Run
from grlhf.trainer.step import LossConfig, TrainBatch, UpdateCalls, accumulate_and_update

PHASE_CODES = {"sft": 1, "grm": 2, "policy_sft": 3, "policy": 4, "rm": 5}


@dataclass(frozen=True)
class Budget:
    """How long and how fast a phase trains: ``steps`` updates of ``batch_size`` items at peak ``lr``, after
    ``warmup_ratio`` of them warming up, on the ``schedule`` (trainer/optim.py SCHEDULES)."""

    steps: int
    batch_size: int
    lr: float
    warmup_ratio: float
    eval_every: int
    schedule: str = "cosine"


@dataclass
class Roles:
    """The models of an RL phase by role: the actor (trained), the frozen reference (KL; None without one)
    and the rollout engine that samples from the actor. ``sync_weights`` is the one explicit weight sync."""

    actor: Any
    rollout: Generator
    reference: Any = None

    def sync_weights(self) -> None:
        """Make the rollout engine follow the actor (a pointer swap for the JAX sampler, a push for vLLM)."""
        if isinstance(self.rollout, WeightFollower):
            self.rollout.update_weights(self.actor)


@dataclass
class RLTask:
    """What makes an RL stage. Requests have ``conversation`` (what the rollout sees) and
    ``log_fields(text)`` (what ``samples.jsonl`` shows)."""

    name: str  # the phase: checkpoints/<name>, metrics stage <name>
    items: Sequence[Any]
    requests: Callable[[list, np.random.Generator], list]  # a step's items -> its requests
    reward: Reward
    evaluate: Optional[Callable[[], dict]] = None
    # extra metrics of a step's rollouts: (requests, completions, rewards [B * n]) -> metrics
    monitor: Optional[Callable[[list, list, np.ndarray], dict]] = None


def step_rng(cfg: Config, phase: str, step: int) -> np.random.Generator:
    """The randomness of one step: a function of (seed, phase, step) only, so a resumed run repeats it."""
    return np.random.default_rng([cfg.trainer.seed, PHASE_CODES[phase], step])


def rollout_sampling(cfg: Config, rng: np.random.Generator) -> SamplingParams:
    r = cfg.rollout
    return SamplingParams(n=r.n, temperature=r.temperature, top_p=r.top_p, top_k=r.top_k, max_tokens=r.max_tokens,
                          stop_token_ids=tuple(r.stop_token_ids), seed=int(rng.integers(2**31)))


def buckets(cfg: Config) -> dict:
    return {"length_buckets": cfg.data.length_buckets, "patch_buckets": cfg.data.patch_buckets}


def new_phase(run: Run, name: str, budget: Budget, num_items: int, step_fn, evaluate=None,
              lengths: Optional[Sequence[int]] = None) -> Phase:
    """A phase over ``num_items`` records with an AdamW optimizer on the model's parameters (the moments in
    their parameters' shardings) and this process's slice of shuffled global batches (length-grouped when
    each record's ``lengths`` are given). ``step_fn(phase, optimizer, batch of item indices, step) ->
    metrics``."""
    o = run.cfg.optimizer
    tx, schedule = make_optimizer(budget.lr, budget.steps, weight_decay=o.weight_decay,
                                  warmup_ratio=budget.warmup_ratio, schedule=budget.schedule,
                                  min_lr_ratio=o.min_lr_ratio, b1=o.b1, b2=o.b2, eps=o.eps,
                                  max_grad_norm=o.max_grad_norm)
    optimizer = nnx.Optimizer(run.model, tx, wrt=nnx.Param)
    if run.mesh is not None:
        place_state(optimizer, run.mesh, nnx.optimizer.OptState)
    iterator = EpochIterator(num_items, budget.batch_size, seed=run.cfg.data.seed, lengths=lengths,
                             process_index=jax.process_index(), process_count=jax.process_count())

    def step(index: int) -> dict:
        indices = next_global_batch(iterator)
        metrics = step_fn(phase, optimizer, indices, index)
        return {**metrics, "lr": float(schedule(index)), "epoch": float(iterator.epoch)}

    phase = Phase(name, budget.steps, step, optimizer, iterator, evaluate, budget.eval_every)
    return phase


class PhaseCalls:
    """A phase's ``UpdateCalls``, made at its first update and kept for the phase's life (the step functions
    close over it), so the model and optimizer are bound once, not at every step."""

    def __init__(self):
        self._calls: Optional[UpdateCalls] = None

    def get(self, model, optimizer) -> UpdateCalls:
        if self._calls is None or not self._calls.bound_to(model, optimizer):
            self._calls = UpdateCalls(model, optimizer)
        return self._calls


def next_global_batch(iterator: EpochIterator) -> list[int]:
    """The next global batch's record indices, gathered from every process's slice (a collective)."""
    return gather_indices(iterator.next_indices())


def peek_indices(iterator: EpochIterator) -> list[int]:
    """The global batch the next step will take, without moving the iterator (every process calls it)."""
    state = iterator.state_dict()
    try:
        return next_global_batch(iterator)
    finally:
        iterator.load_state_dict(state)


class EncodeAhead:
    """Encodes the next step's examples on a worker thread while the devices run this step's update.

    The host's part of a supervised step (chat template, tokenizer, image processor, M-RoPE positions:
    ~35 ms of a ~0.2 s warm-start step of the embedded default) otherwise runs while the devices wait.
    The encoding is the same function of the same items, so the update is unchanged. ``wait`` is called
    before the step returns: evaluation and checkpoints never run beside it, and the processor is never
    used by two threads at once. An error in the worker is raised by ``take`` at the step that needs it.
    """

    def __init__(self, encode: Callable[[list], list[TrainBatch]], items: Sequence[Any]):
        self.encode, self.items = encode, items
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="grlhf-encode")
        self._indices: Optional[tuple] = None
        self._future: Optional[Future] = None

    def take(self, indices: Sequence[int]) -> list[TrainBatch]:
        """This step's micro-batches: the ones encoded ahead when they are for these indices."""
        future, ahead = self._future, self._indices
        self._future = self._indices = None
        if future is not None and ahead == tuple(indices):
            return future.result()
        return self.encode([self.items[i] for i in indices])

    def start(self, indices: Sequence[int]) -> None:
        self._indices = tuple(indices)
        self._future = self._pool.submit(self.encode, [self.items[i] for i in indices])

    def wait(self) -> None:
        if self._future is not None:
            self._future.exception()  # blocks until done; the error itself is raised by take


def supervised_phase(run: Run, name: str, budget: Budget, items: Sequence[Any],
                     encode: Callable[[list], list[TrainBatch]], loss: LossConfig, *, evaluate=None,
                     lengths: Optional[Sequence[int]] = None) -> Phase:
    """Supervised training: each step's items -> ``encode`` -> device micro-batches -> one exact update.
    The next step's items are encoded while the devices compute (``EncodeAhead``); with ``lengths`` (one
    per item) each batch holds items of similar length (``EpochIterator``'s length grouping)."""
    calls, ahead = PhaseCalls(), EncodeAhead(encode, items)

    def step_fn(phase, optimizer, indices, step):
        batches = ahead.take(indices)
        if step + 1 < phase.total_steps:
            ahead.start(peek_indices(phase.iterator))
        try:
            result = accumulate_and_update(run.model, optimizer, batches, loss, calls.get(run.model, optimizer))
        finally:
            ahead.wait()
        return {**result.metrics, "updates_skipped": float(not result.applied)}

    return new_phase(run, name, budget, len(items), step_fn, evaluate, lengths)


def rl_phase(run: Run, roles: Roles, task: RLTask, budget: Budget) -> Phase:
    """RL on ``task`` (paper §3, both stages): rollout -> reward -> advantages -> PPO updates -> weight sync."""
    cfg = run.cfg
    kl_reward = cfg.algorithm.kl_in_reward
    if roles.actor is not run.model:
        raise ValueError("the actor must be the run's model (the optimizer updates run.model)")
    if kl_reward.enabled and roles.reference is None:
        raise ValueError("algorithm.kl_in_reward needs a reference model (Roles.reference)")

    calls = PhaseCalls()

    def step_fn(phase, optimizer, indices, step):
        rng = step_rng(cfg, task.name, step)
        requests, n = task.requests([task.items[i] for i in indices], rng), cfg.rollout.n
        conversations = [r.conversation for r in requests]  # built once: its n rows share the image object
        began = time.perf_counter()
        completions = roles.rollout.generate(conversations, rollout_sampling(cfg, rng))
        rollout_time = time.perf_counter() - began
        rewards, reward_metrics = task.reward(requests, completions, rng=rng, step=step)
        reward_time = time.perf_counter() - began - rollout_time
        flat = [c for group in completions for c in group]
        metrics = rl_update(run, optimizer, roles.reference, [c for c in conversations for _ in range(n)], flat,
                            rewards, n, phase.carry if kl_reward.enabled else None,
                            calls=calls.get(run.model, optimizer))
        roles.sync_weights()
        metrics["samples"] = [{**r.log_fields(group[0].text), "response": group[0].text,
                               "reward": float(rewards[i * n]), "finish": group[0].finish_reason}
                              for i, (r, group) in enumerate(zip(requests[:cfg.logging.samples], completions))]
        generated = sum(len(c.token_ids) for c in flat)
        return {**metrics, **reward_metrics, **(task.monitor(requests, completions, rewards) if task.monitor else {}),
                **roles.rollout.metrics(), "rollout_time": rollout_time, "reward_time": reward_time,
                "rollout_tokens_per_s": generated / max(rollout_time, 1e-9)}

    phase = new_phase(run, task.name, budget, len(task.items), step_fn, task.evaluate)
    if kl_reward.enabled:
        phase.carry["kl_coef"] = kl_reward.coef
    return phase


def ppo_loss_config(cfg: Config, with_reference: bool) -> LossConfig:
    algo = cfg.algorithm
    return LossConfig(kind="ppo", temperature=cfg.rollout.temperature, clip_low=algo.clip_ratio_low,
                      clip_high=algo.clip_ratio_high, dual_clip=algo.clip_ratio_c, agg=algo.loss_agg_mode,
                      kl_coef=algo.kl_coef if with_reference else 0.0, kl_type=algo.kl_type,
                      entropy_coef=algo.entropy_coef, agg_scale=float(cfg.rollout.max_tokens),
                      head_chunk=cfg.model.head_chunk)


def penalise_kl(cfg: Config, batches: Sequence[TrainBatch], rewards: np.ndarray, carry: dict
                ) -> tuple[np.ndarray, dict[str, float]]:
    """KL in the reward (verl's ``use_kl_in_reward``): each sequence's reward minus ``coef * sum_t KL_t`` of
    its old against its reference log-probs; the coefficient then follows the ``KLController``."""
    kl_reward = cfg.algorithm.kl_in_reward
    # the adaptive coefficient is the carried one; a fixed one is the config's (a resume may change it)
    coef, penalties, kls = carry["kl_coef"] if kl_reward.type == "adaptive" else kl_reward.coef, [], []
    for batch in batches:
        penalty, current_kl = sequence_kl_penalty(batch.old_logprobs, batch.ref_logprobs, batch.loss_mask, coef,
                                                  kl_reward.kl_type)
        penalties.append(to_host(penalty))
        kls.append(float(to_host(current_kl)) * len(penalties[-1]))
    current = sum(kls) / max(len(rewards), 1)
    controller = KLController(kl_reward.type, kl_reward.coef, kl_reward.target_kl, kl_reward.horizon)
    carry["kl_coef"] = float(controller.update(coef, current, n_steps=len(rewards)))
    return (rewards - np.concatenate(penalties)).astype(np.float32), {"reward_kl": current, "reward_kl_coef": coef}


def rl_update(run: Run, optimizer, reference, conversations: Sequence[list], completions: Sequence[Completion],
              rewards: np.ndarray, group_size: int, kl_carry: Optional[dict] = None,
              calls: Optional[UpdateCalls] = None) -> dict[str, float]:
    """Group advantages of ``rewards`` (consecutive groups of ``group_size``), then ``ppo_epochs`` passes of
    PPO updates over mini-batches of the rows (conversation + sampled completion); the step's metrics."""
    cfg, algo = run.cfg, run.cfg.algorithm
    host = encode_micro_batches(run.processor, conversations, [c.token_ids for c in completions],
                                algo.micro_batch_size, **buckets(cfg))
    batches, metrics = rl_batches(run.model, host, temperature=cfg.rollout.temperature, reference=reference,
                                  sampler_logprobs=[c.logprobs for c in completions],
                                  use_sampler_logprobs=cfg.rollout.logprobs == "sampler", mesh=run.mesh,
                                  head_chunk=cfg.model.head_chunk, windows=cfg.model.loss_logits == "responses")
    scores = rewards
    if kl_carry is not None:
        rewards, kl_metrics = penalise_kl(cfg, batches, rewards, kl_carry)
        metrics.update(kl_metrics)
    group_ids = np.repeat(np.arange(len(rewards) // group_size), group_size)
    adv = np.asarray(group_advantages(jnp.asarray(rewards), jnp.asarray(group_ids), algo.advantage,
                                      norm_by_std=algo.norm_adv_by_std))
    offsets = np.cumsum([0] + [b.loss_mask.shape[0] for b in batches])
    batches = [b._replace(advantages=place(adv[start:end], run.mesh)) for b, start, end in
               zip(batches, offsets[:-1], offsets[1:])]
    loss_cfg = ppo_loss_config(cfg, reference is not None)
    per_update = max((algo.mini_batch_size or len(completions)) // algo.micro_batch_size, 1)
    totals: dict[str, float] = {}
    count = skipped = 0
    for _ in range(algo.ppo_epochs):
        for start in range(0, len(batches), per_update):
            result = accumulate_and_update(run.model, optimizer, batches[start:start + per_update], loss_cfg, calls)
            skipped, count = skipped + (not result.applied), count + 1
            for key, value in result.metrics.items():
                totals[key] = totals.get(key, 0.0) + value
    lengths = np.array([len(c.token_ids) for c in completions], np.float32)
    return {**{k: v / count for k, v in totals.items()}, **metrics, "updates": float(count),
            "updates_skipped": float(skipped), "reward_mean": float(scores.mean()), "reward_std": float(scores.std()),
            "advantage_mean": float(adv.mean()), "advantage_std": float(adv.std()), "advantage_max": float(adv.max()),
            "advantage_min": float(adv.min()),
            "zero_std_groups": float(np.mean(rewards.reshape(-1, group_size).std(axis=1) == 0)),
            "response_length": float(lengths.mean()), "response_length_max": float(lengths.max()),
            "truncated": float(np.mean([c.finish_reason == "length" for c in completions]))}


__all__ = ["Budget", "PHASE_CODES", "RLTask", "Roles", "buckets", "new_phase", "penalise_kl",
           "ppo_loss_config", "rl_phase", "rl_update", "rollout_sampling", "step_rng", "supervised_phase"]
