"""Pieces every stage shares: lazy datasets, the optimizer and iterator of a phase, the supervised phase,
and the RL update (rows + rewards -> GRPO advantages -> micro-batches -> PPO updates)."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from grlhf.config import Config
from grlhf.data.iteration import EpochIterator
from grlhf.rl import grpo_advantages, rloo_advantages
from grlhf.rollout.jax_sampler import SamplingParams
from grlhf.trainer import distributed
from grlhf.trainer.batches import encode_micro_batches, train_batches
from grlhf.trainer.loop import Phase, Run
from grlhf.trainer.optim import make_optimizer
from grlhf.trainer.step import LossConfig, accumulate_and_update

PHASE_CODES = {"sft": 1, "grm": 2, "policy_sft": 3, "policy": 4, "rm": 5}


class LazyItems(Sequence):
    """``make(index)`` for ``index`` in ``range(start, start + count)``, built on access (the synthetic task)."""

    def __init__(self, make: Callable[[int], Any], count: int, start: int = 0):
        self.make, self.count, self.start = make, count, start

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i):
        if not -self.count <= i < self.count:
            raise IndexError(i)
        return self.make(self.start + (i % self.count))


def advantages(rewards: np.ndarray, group_ids: np.ndarray, cfg: Config) -> np.ndarray:
    """GRPO (``norm_adv_by_std``), Dr.GRPO (no std) or RLOO advantages over the groups."""
    algo = cfg.algorithm
    if algo.advantage == "rloo":
        return np.asarray(rloo_advantages(jnp.asarray(rewards), jnp.asarray(group_ids)))
    norm = algo.norm_adv_by_std and algo.advantage == "grpo"
    return np.asarray(grpo_advantages(jnp.asarray(rewards), jnp.asarray(group_ids), norm_by_std=norm))


def make_phase_optimizer(run: Run, lr: float, steps: int, warmup_ratio: float):
    """``(nnx.Optimizer over the model's parameters, lr schedule)`` with the config's AdamW settings."""
    o = run.cfg.optimizer
    tx, schedule = make_optimizer(lr, steps, weight_decay=o.weight_decay, warmup_ratio=warmup_ratio,
                                  schedule=o.schedule, min_lr_ratio=o.min_lr_ratio, b1=o.b1, b2=o.b2, eps=o.eps,
                                  max_grad_norm=o.max_grad_norm)
    optimizer = nnx.Optimizer(run.model, tx, wrt=nnx.Param)
    if run.mesh is not None:  # the moments in their parameters' shardings, as every update leaves them
        from grlhf.models.qwen_vl.sharding import place_state

        place_state(optimizer, run.mesh, nnx.optimizer.OptState)
    return optimizer, schedule


def make_iterator(run: Run, count: int, batch_size: int) -> EpochIterator:
    """This process's slice of shuffled global batches over ``count`` records."""
    return EpochIterator(count, batch_size, seed=run.cfg.data.seed, process_index=jax.process_index(),
                         process_count=jax.process_count())


def buckets(run: Run) -> dict:
    return {"length_buckets": run.cfg.data.length_buckets, "patch_buckets": run.cfg.data.patch_buckets}


def step_rng(cfg: Config, phase: str, step: int) -> np.random.Generator:
    """The randomness of one step: a function of (seed, phase, step) only, so a resumed run repeats it."""
    return np.random.default_rng([cfg.trainer.seed, PHASE_CODES[phase], step])


def rollout_sampling(cfg: Config, rng: np.random.Generator) -> SamplingParams:
    r = cfg.rollout
    return SamplingParams(n=r.n, temperature=r.temperature, top_p=r.top_p, top_k=r.top_k, max_tokens=r.max_tokens,
                          stop_token_ids=tuple(r.stop_token_ids), seed=int(rng.integers(2**31)))


def sft_phase(run: Run, name: str, items: Sequence[Any], make_example: Callable[[Any], tuple[list, str]], *,
              evaluate=None) -> Phase:
    """Supervised fine-tuning (token-mean NLL) on ``make_example(item) -> (conversation, target text)``."""
    cfg = run.cfg
    optimizer, schedule = make_phase_optimizer(run, cfg.sft.lr, cfg.sft.steps, cfg.sft.warmup_ratio)
    iterator = make_iterator(run, len(items), cfg.sft.batch_size)
    loss_cfg = LossConfig(kind="sft")

    def step_fn(step: int) -> dict:
        examples = [make_example(items[i]) for i in distributed.gather_indices(iterator.next_indices())]
        host = encode_micro_batches(run.processor, [e[0] for e in examples], [e[1] for e in examples],
                                    cfg.sft.micro_batch_size, **buckets(run))
        batches, _ = train_batches(run.model, host, need_old=False, mesh=run.mesh)
        result = accumulate_and_update(run.model, optimizer, batches, loss_cfg)
        return {**result.metrics, "lr": float(schedule(step)), "updates_skipped": float(not result.applied),
                "epoch": float(iterator.epoch)}

    return Phase(name, cfg.sft.steps, step_fn, optimizer, iterator, evaluate, cfg.sft.eval_every)


def ppo_loss_config(cfg: Config, with_reference: bool) -> LossConfig:
    algo = cfg.algorithm
    return LossConfig(kind="ppo", temperature=cfg.rollout.temperature, clip_low=algo.clip_ratio_low,
                      clip_high=algo.clip_ratio_high, dual_clip=algo.clip_ratio_c, agg=algo.loss_agg_mode,
                      kl_coef=algo.kl_coef if with_reference else 0.0, kl_type=algo.kl_type,
                      entropy_coef=algo.entropy_coef, agg_scale=float(cfg.rollout.max_tokens))


def rl_update(run: Run, optimizer, reference, conversations: Sequence[list], completions: Sequence[Any],
              rewards: np.ndarray, group_ids: np.ndarray) -> dict[str, float]:
    """GRPO advantages of ``rewards`` within groups, then ``ppo_epochs`` passes of PPO updates over
    mini-batches of the rows (conversation + sampled completion). Returns the step's training metrics."""
    cfg, algo = run.cfg, run.cfg.algorithm
    adv = advantages(rewards, group_ids, cfg)
    host = encode_micro_batches(run.processor, conversations, [c.token_ids for c in completions],
                                algo.micro_batch_size, **buckets(run))
    batches, gap = train_batches(run.model, host, advantages=adv, temperature=cfg.rollout.temperature,
                                 reference=reference, sampler_logprobs=[c.logprobs for c in completions],
                                 use_sampler_logprobs=cfg.rollout.logprobs == "sampler", mesh=run.mesh)
    loss_cfg = ppo_loss_config(cfg, reference is not None)
    per_update = max((algo.mini_batch_size or len(completions)) // algo.micro_batch_size, 1)
    totals: dict[str, float] = {}
    count = skipped = 0
    for _ in range(algo.ppo_epochs):
        for start in range(0, len(batches), per_update):
            result = accumulate_and_update(run.model, optimizer, batches[start:start + per_update], loss_cfg)
            skipped += not result.applied
            count += 1
            for key, value in result.metrics.items():
                totals[key] = totals.get(key, 0.0) + value
    lengths = np.array([len(c.token_ids) for c in completions], np.float32)
    size = int(np.max(np.bincount(group_ids)))
    grouped = rewards.reshape(-1, size) if len(rewards) % size == 0 else rewards[None]
    return {**{k: v / count for k, v in totals.items()}, **gap, "updates": float(count),
            "updates_skipped": float(skipped), "reward_mean": float(rewards.mean()),
            "reward_std": float(rewards.std()), "advantage_mean": float(adv.mean()), "advantage_std": float(adv.std()),
            "advantage_max": float(adv.max()), "advantage_min": float(adv.min()),
            "zero_std_groups": float(np.mean(grouped.std(axis=1) == 0)), "response_length": float(lengths.mean()),
            "response_length_max": float(lengths.max()),
            "truncated": float(np.mean([c.finish_reason == "length" for c in completions]))}


__all__ = ["LazyItems", "PHASE_CODES", "advantages", "buckets", "make_iterator", "make_phase_optimizer",
           "ppo_loss_config", "rl_update", "rollout_sampling", "sft_phase", "step_rng"]
