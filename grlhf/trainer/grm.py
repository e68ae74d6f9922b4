"""Stage 1: the generative reward model from RL (``trainer.stage=grm``) and its warm start (``sft``).

GRM step: a batch of preference pairs, each shown in a random order -> ``rollout.n`` sampled judgments
per pair -> the rule reward of each -> GRPO advantages over the judgments of a pair -> PPO updates with
a KL loss to the frozen warm-start model. SFT: the token NLL of judgment traces (the synthetic task's
traces; the paper's GRM+SFT baseline on real data).
"""

from __future__ import annotations

import time
from functools import partial
from typing import Any, Sequence

import numpy as np

from grlhf.config import Config, ConfigError
from grlhf.reward.prompt import judge_template
from grlhf.trainer import distributed
from grlhf.trainer.judging import evaluate_judge, judge_case, judgment_rewards, sample_orders, trace_example
from grlhf.trainer.loop import Phase, Run
from grlhf.trainer.phases import (LazyItems, make_iterator, make_phase_optimizer, rl_update, rollout_sampling,
                                  sft_phase, step_rng)


def preference_data(cfg: Config) -> tuple[Sequence[Any], Sequence[Any], Sequence[dict]]:
    """``(train pairs, held-out pairs, warm-start trace items)``; pairs are ``PreferencePair``s."""
    from grlhf.data.loaders import PreferencePair, load_preference_pairs

    data = cfg.data
    if data.source == "synthetic":
        from grlhf.data import synthetic

        scfg = synthetic_config(cfg)

        def pair(i: int) -> PreferencePair:
            item = synthetic.preference_pair(scfg, i)
            better, worse = ((item["response_1"], item["response_2"]) if item["overall_response"] == 1
                             else (item["response_2"], item["response_1"]))
            return PreferencePair(str(i), item["image"], item["question"], better, worse)

        traces = LazyItems(lambda i: synthetic.grm_trace(scfg, i), data.num_train)
        return LazyItems(pair, data.num_train), LazyItems(pair, data.num_eval, start=data.num_train), traces
    pairs, report = load_preference_pairs(data.train_files, data.format, on_bad_row=data.on_bad_row)
    if data.eval_files:
        held_out, _ = load_preference_pairs(data.eval_files, data.format, on_bad_row=data.on_bad_row)
    else:
        held_out, pairs = pairs[len(pairs) - data.num_eval:], pairs[:len(pairs) - data.num_eval]
    if not pairs:
        raise ConfigError(f"data.train_files={data.train_files}: no usable preference pairs ({report.summary()})")
    return pairs, held_out, []


def synthetic_config(cfg: Config):
    """The synthetic task as configured under ``data``."""
    from grlhf.data import synthetic

    d = cfg.data
    return synthetic.SyntheticConfig(seed=d.seed, image_size=d.image_size, max_shapes=d.max_shapes,
                                     num_pairs=d.num_train, num_prompts=d.num_train, grm_error_rate=d.grm_error_rate,
                                     policy_error_rate=d.policy_error_rate, question_kinds=tuple(d.question_kinds),
                                     trace_style=d.trace_style, grm_error_mode=d.grm_error_mode,
                                     policy_error_mode=d.policy_error_mode)


def eval_fn(run: Run, sampler, held_out: Sequence[Any]):
    """Held-out pairwise accuracy of greedy judgments (both orders), parse failures, position bias."""
    cfg = run.cfg
    template = judge_template(cfg.reward.template)
    return lambda: evaluate_judge(sampler, held_out, template=template, max_tokens=cfg.rollout.max_tokens,
                                  principles=cfg.reward.principles, stop_token_ids=cfg.rollout.stop_token_ids)


def answers_directly(item: dict, fraction: float, seed: int) -> bool:
    """Whether trace item ``item`` becomes a direct-answer example (a fixed draw per item and seed)."""
    return fraction > 0 and np.random.default_rng([seed, 7, int(item["id"])]).random() < fraction


def warm_start_example(item: dict, *, template: str, answer_fraction: float = 0.0, seed: int = 0
                       ) -> tuple[list, str]:
    """A trace item as a judgment example, or (``answer_fraction`` of them) as its question answered."""
    if answers_directly(item, answer_fraction, seed):
        from grlhf.data.synthetic import world
        from grlhf.trainer.policy import prompt_conversation

        return prompt_conversation(item["question"], item["image"]), world.answer(item["scene"], item["question"])
    return trace_example(item, template=template)


def warm_start_phase(run: Run, traces: Sequence[dict], *, evaluate=None) -> Phase:
    """Supervised warm start of the GRM on judgment traces (and, with ``sft.answer_fraction``, answers)."""
    if not traces:
        raise ConfigError("the sft warm start needs judgment traces; data.source=synthetic provides them "
                          "(real preference files have none: set sft.steps=0)")
    cfg = run.cfg
    make = partial(warm_start_example, template=judge_template(cfg.reward.template),
                   answer_fraction=cfg.sft.answer_fraction, seed=cfg.data.seed)
    return sft_phase(run, "sft", traces, make, evaluate=evaluate)


def grm_phase(run: Run, sampler, pairs: Sequence[Any], reference, total_steps: int, *, evaluate=None) -> Phase:
    """RL of the GRM with the rule reward (paper §3, stage 1)."""
    cfg = run.cfg
    template = judge_template(cfg.reward.template)
    optimizer, schedule = make_phase_optimizer(run, cfg.optimizer.lr, total_steps, cfg.optimizer.warmup_ratio)
    balanced = cfg.reward.balanced_orders
    iterator = make_iterator(run, len(pairs), cfg.trainer.batch_size // (2 if balanced else 1))
    m = cfg.rollout.n

    def step_fn(step: int) -> dict:
        indices = distributed.gather_indices(iterator.next_indices())
        rng = step_rng(cfg, "grm", step)
        cases = [judge_case(pairs[i], swap, template=template, principles=cfg.reward.principles)
                 for i, swap in sample_orders(rng, indices, balanced)]
        began = time.perf_counter()
        groups = sampler.generate([c.conversation for c in cases], rollout_sampling(cfg, rng))
        completions = [c for group in groups for c in group]
        rollout_time = time.perf_counter() - began
        rewards, failures = judgment_rewards([c.text for c in completions], np.repeat([c.preferred for c in cases], m),
                                             cfg.reward.rule)
        metrics = rl_update(run, optimizer, reference, [c.conversation for c in cases for _ in range(m)], completions,
                            rewards, np.repeat(np.arange(len(cases)), m))
        generated = sum(len(c.token_ids) for c in completions)
        metrics["samples"] = [{"prompt": c.conversation[-1]["content"][-1]["text"], "preferred": c.preferred,
                               "judgment": completions[k * m].text, "reward": float(rewards[k * m])}
                              for k, c in enumerate(cases[:cfg.logging.samples])]
        return {**metrics, "lr": float(schedule(step)), "parse_failures": float(failures),
                "rollout_time": rollout_time, "rollout_tokens_per_s": generated / max(rollout_time, 1e-9),
                "epoch": float(iterator.epoch)}

    return Phase("grm", total_steps, step_fn, optimizer, iterator, evaluate, cfg.trainer.eval_every)


__all__ = ["answers_directly", "eval_fn", "grm_phase", "preference_data", "synthetic_config", "warm_start_example",
           "warm_start_phase"]
