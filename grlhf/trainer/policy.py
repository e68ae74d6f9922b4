"""Stage 2: the policy from grouped comparison (``trainer.stage=policy``) and its warm start.

Policy step: a batch of prompts -> ``rollout.n`` answers each -> rewards from ``reward.source``:
``grm`` (the GRM judges every ordered pair of a group; S(y_i) as in the paper), ``grm_single`` (each
answer judged against one random other answer: the ablation without grouped comparison), ``rm`` (the
score-only baseline of ``trainer.stage=rm``, each answer scored on its own) or ``oracle``
(the synthetic task's true quality, for calibration) -> GRPO over each prompt's answers -> PPO updates
with a KL loss to the warm-start policy. Evaluation: greedy answers to held-out prompts, checked
against the synthetic world's ground truth.
"""

from __future__ import annotations

import time
from typing import Any, Optional, Sequence

import numpy as np

from grlhf.config import Config, ConfigError
from grlhf.reward.judge import Group, GroupJudge
from grlhf.reward.prompt import judge_template
from grlhf.rollout.jax_sampler import SamplingParams
from grlhf.trainer import distributed
from grlhf.trainer.loop import Phase, Run
from grlhf.trainer.phases import (LazyItems, make_iterator, make_phase_optimizer, rl_update, rollout_sampling,
                                  sft_phase, step_rng)


def as_pil(image: Any) -> Any:
    """A PIL image from a dataset's ``ImageSource`` (lazy) or a PIL image itself."""
    from grlhf.data.loaders import ImageSource

    return image.load() if isinstance(image, ImageSource) else image


def prompt_conversation(question: str, image: Any) -> list[dict]:
    """The policy's user turn: the image, then the question."""
    image = as_pil(image)
    return [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": question}]}]


def prompt_data(cfg: Config) -> tuple[Sequence[dict], Sequence[dict], Sequence[dict]]:
    """``(train prompts, held-out prompts, warm-start answers)``: dicts with ``question``, ``image`` and,
    on the synthetic task, ``scene`` (to check answers) and ``answer``."""
    from grlhf.data import synthetic
    from grlhf.data.loaders import load_prompts
    from grlhf.trainer.grm import synthetic_config

    data = cfg.data
    if data.source == "synthetic":
        scfg = synthetic_config(cfg)
        make = lambda i: synthetic.rl_prompt(scfg, i)  # noqa: E731
        warm = LazyItems(lambda i: synthetic.policy_answer(scfg, i), data.num_train)
        return LazyItems(make, data.num_train), LazyItems(make, data.num_eval, start=data.num_train), warm
    prompts, report = load_prompts(data.train_files)
    rows = [{"question": p.question, "image": p.image, "answer": p.ground_truth} for p in prompts]
    if not rows:
        raise ConfigError(f"data.train_files={data.train_files}: no usable prompts ({report.summary()})")
    if data.eval_files:
        held, _ = load_prompts(data.eval_files)
        held_rows = [{"question": p.question, "image": p.image, "answer": p.ground_truth} for p in held]
    else:
        held_rows, rows = rows[len(rows) - data.num_eval:], rows[:len(rows) - data.num_eval]
    return rows, held_rows, []


def true_quality(item: dict, text: str) -> Optional[float]:
    """The synthetic world's quality of an answer (1 right, 0 wrong, between: partly); None off the task."""
    if "scene" not in item:
        return None
    from grlhf.data.synthetic import world

    return world.quality(item["scene"], item["question"], text)


def evaluate_policy(sampler, held_out: Sequence[dict], *, max_tokens: int, batch_size: int = 64,
                    stop_token_ids: Sequence[int] = ()) -> dict[str, float]:
    """Greedy answers to held-out prompts: true accuracy (quality 1), mean quality, length, truncation."""
    greedy = SamplingParams(n=1, temperature=0.0, max_tokens=max_tokens, stop_token_ids=tuple(stop_token_ids))
    completions = []
    for start in range(0, len(held_out), batch_size):
        chunk = held_out[start:start + batch_size] if isinstance(held_out, list) else [
            held_out[i] for i in range(start, min(start + batch_size, len(held_out)))]
        completions.extend(c[0] for c in sampler.generate(
            [prompt_conversation(p["question"], p["image"]) for p in chunk], greedy))
    items = [held_out[i] for i in range(len(held_out))]
    metrics = {"answer_length": float(np.mean([len(c.token_ids) for c in completions])),
               "truncated": float(np.mean([c.finish_reason == "length" for c in completions])),
               "prompts": float(len(items))}
    qualities = [true_quality(item, c.text) for item, c in zip(items, completions)]
    if qualities and qualities[0] is not None:
        metrics["true_accuracy"] = float(np.mean([q == 1.0 for q in qualities]))
        metrics["true_quality"] = float(np.mean(qualities))
    return metrics


def warm_start_phase(run: Run, answers: Sequence[dict], *, evaluate=None) -> Phase:
    """Supervised warm start of the policy on answers (the synthetic task's are right half of the time)."""
    if not answers:
        raise ConfigError("the policy warm start needs answers; data.source=synthetic provides them (sft.steps=0 "
                          "for real prompts)")
    return sft_phase(run, "policy_sft", answers,
                     lambda item: (prompt_conversation(item["question"], item["image"]), item["answer"]),
                     evaluate=evaluate)


def make_judge(cfg: Config, mesh=None) -> Optional[Any]:
    """The reward behind ``reward.source``: a ``GroupJudge`` (the GRM behind ``reward.judge.backend``) for
    ``grm`` and ``grm_single``, a ``ScoreReward`` for ``rm``, None for the oracle."""
    from grlhf.data.processor import load_processor
    from grlhf.trainer.loop import resolve_model_path

    r = cfg.reward
    if r.source == "rm":
        from grlhf.models.qwen_vl.reward_model import has_reward_head, load_reward_model
        from grlhf.trainer.rm import ScoreReward

        path = resolve_model_path(r.rm_path, cfg.model.tiny_seed)
        if not has_reward_head(path):
            raise ConfigError(f"reward.rm_path={r.rm_path}: no score.safetensors there (export of trainer.stage=rm)")
        model = load_reward_model(path, dtype=cfg.model.dtype, mesh=mesh, attention_impl=cfg.model.attention_impl)
        return ScoreReward(model, load_processor(path), cfg.data.length_buckets, cfg.data.patch_buckets, mesh,
                           incomplete_score=r.incomplete_score, batch_size=r.judge_batch)
    if not r.source.startswith("grm"):
        return None
    from grlhf.trainer.backends import judge_backend

    backend = judge_backend(cfg, mesh)
    return GroupJudge(backend, template=judge_template(r.template), both_orders=r.both_orders,
                      samples=r.judge_samples, temperature=r.judge_temperature, max_tokens=r.judge_max_tokens,
                      incomplete_score=r.incomplete_score, max_batch=r.judge_batch, seed=cfg.trainer.seed)


def policy_rewards(cfg: Config, judge: Optional[GroupJudge], prompts: Sequence[dict], completions: Sequence[list],
                   rng: np.random.Generator, step: int) -> tuple[np.ndarray, dict[str, float]]:
    """``[B * n]`` rewards of the sampled answers from ``reward.source``, and the judge's metrics."""
    complete = [[c.finish_reason == "stop" for c in group] for group in completions]
    if cfg.reward.source == "oracle":
        rewards = [[true_quality(p, c.text) if ok else cfg.reward.incomplete_score for c, ok in zip(group, oks)]
                   for p, group, oks in zip(prompts, completions, complete)]
        return np.asarray(rewards, np.float32).reshape(-1), {}
    if cfg.reward.source == "rm":
        return judge([prompt_conversation(p["question"], p["image"]) for p in prompts], completions)
    groups = [Group(p["question"], as_pil(p["image"]),
                    [c.text for c in group], oks) for p, group, oks in zip(prompts, completions, complete)]
    result = judge(groups, step=step) if cfg.reward.source == "grm" else judge.single(groups, rng, step=step)
    return result.scores.reshape(-1).astype(np.float32), result.metrics


def policy_phase(run: Run, sampler, judge: Optional[GroupJudge], prompts: Sequence[dict], reference,
                 total_steps: int, *, evaluate=None) -> Phase:
    """RL of the policy from the configured reward (paper §3, stage 2)."""
    cfg = run.cfg
    optimizer, schedule = make_phase_optimizer(run, cfg.optimizer.lr, total_steps, cfg.optimizer.warmup_ratio)
    iterator = make_iterator(run, len(prompts), cfg.trainer.batch_size)
    n = cfg.rollout.n

    def step_fn(step: int) -> dict:
        batch = [prompts[i] for i in distributed.gather_indices(iterator.next_indices())]
        rng = step_rng(cfg, "policy", step)
        conversations = [prompt_conversation(p["question"], p["image"]) for p in batch]
        began = time.perf_counter()
        completions = sampler.generate(conversations, rollout_sampling(cfg, rng))
        rollout_time = time.perf_counter() - began
        rewards, judge_metrics = policy_rewards(cfg, judge, batch, completions, rng, step)
        judge_time = time.perf_counter() - began - rollout_time
        flat = [c for group in completions for c in group]
        metrics = rl_update(run, optimizer, reference, [c for c in conversations for _ in range(n)], flat, rewards,
                            np.repeat(np.arange(len(batch)), n))
        truth = [true_quality(p, c.text) for p, group in zip(batch, completions) for c in group]
        if truth and truth[0] is not None:
            metrics["sample_true_accuracy"] = float(np.mean([q == 1.0 for q in truth]))
        generated = sum(len(c.token_ids) for c in flat)
        metrics["samples"] = [{"question": p["question"], "response": group[0].text, "reward": float(rewards[i * n]),
                               "true_quality": truth[i * n] if truth else None, "finish": group[0].finish_reason}
                              for i, (p, group) in enumerate(zip(batch, completions)) if i < cfg.logging.samples]
        backend_metrics = sampler.metrics() if hasattr(sampler, "metrics") else {}  # e.g. vLLM's weight syncs
        return {**metrics, **judge_metrics, **backend_metrics, "lr": float(schedule(step)),
                "rollout_time": rollout_time, "judge_time": judge_time,
                "rollout_tokens_per_s": generated / max(rollout_time, 1e-9), "epoch": float(iterator.epoch)}

    return Phase("policy", total_steps, step_fn, optimizer, iterator, evaluate, cfg.trainer.eval_every)


__all__ = ["evaluate_policy", "make_judge", "policy_phase", "policy_rewards", "prompt_conversation", "prompt_data",
           "true_quality", "warm_start_phase"]
