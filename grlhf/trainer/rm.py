"""The score-only baseline (``trainer.stage=rm``): a Qwen-VL with a scalar head trained with Bradley-Terry.

Each step: a batch of preference pairs -> rows ``(image + question, answer)`` for the chosen and the
rejected answers -> ``-log sigmoid(s_w - s_l)`` summed over pairs, accumulated exactly over micro-batches
(``algorithm.micro_batch_size`` rows, half chosen, half rejected). Evaluation: held-out pairwise accuracy
(chosen scored strictly higher) and mean margin. Stage 2 uses it with ``reward.source=rm``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np

from grlhf.trainer import distributed
from grlhf.trainer.batches import device_inputs, encode_micro_batches, place
from grlhf.trainer.loop import Phase, Run
from grlhf.trainer.phases import buckets, make_iterator, make_phase_optimizer
from grlhf.trainer.step import LossConfig, TrainBatch, accumulate_and_update


def _conversation(pair) -> list[dict]:
    from grlhf.trainer.policy import prompt_conversation

    return prompt_conversation(pair.question, pair.image)


def score_answers(model, processor, conversations: Sequence[list], answers: Sequence[Any], *, batch_size: int,
                  length_buckets, patch_buckets=None, mesh=None) -> np.ndarray:
    """``[N]`` reward-model scores of ``(conversation, answer)`` rows; an answer is text (closed with end of
    turn) or sampled token ids (used verbatim)."""
    from grlhf.models.qwen_vl.reward_model import reward_scores
    from grlhf.trainer.distributed import to_host

    out = []
    for host in encode_micro_batches(processor, conversations, list(answers), batch_size,
                                     length_buckets=length_buckets, patch_buckets=patch_buckets):
        out.append(to_host(reward_scores(model, device_inputs(model, host, mesh))))
    return np.concatenate(out) if out else np.zeros(0, np.float32)


@dataclass
class ScoreReward:
    """Stage 2's score-only reward (``reward.source=rm``): each complete answer scored on its own; answers
    with no stop token get ``incomplete_score``, as the group judge gives them."""

    model: Any
    processor: Any
    length_buckets: Sequence[int]
    patch_buckets: Optional[Sequence[int]] = None
    mesh: Any = None
    incomplete_score: float = 0.0
    batch_size: int = 64

    def __call__(self, conversations: Sequence[list], completions: Sequence[list]) -> tuple[np.ndarray, dict]:
        """``([B * n] rewards, metrics)`` for ``n`` completions of each of ``B`` conversations."""
        rows = [(conv, c.token_ids) for conv, group in zip(conversations, completions) for c in group
                if c.finish_reason == "stop"]
        rewards = np.full(sum(len(g) for g in completions), self.incomplete_score, np.float32)
        complete = np.array([c.finish_reason == "stop" for g in completions for c in g], bool)
        if rows:
            rewards[complete] = score_answers(self.model, self.processor, [r[0] for r in rows], [r[1] for r in rows],
                                              batch_size=self.batch_size, length_buckets=self.length_buckets,
                                              patch_buckets=self.patch_buckets, mesh=self.mesh)
        scored = rewards[complete]
        return rewards, {"rm_calls": float(len(rows)), "rm_score_mean": float(scored.mean()) if rows else 0.0,
                         "rm_score_std": float(scored.std()) if rows else 0.0}


def pair_micro_batches(run: Run, pairs: Sequence[Any]) -> list[TrainBatch]:
    """Device micro-batches of ``micro_batch_size // 2`` pairs: chosen rows, then rejected rows."""
    per = max(run.cfg.algorithm.micro_batch_size // 2, 1)
    out = []
    for start in range(0, len(pairs), per):
        chunk = pairs[start:start + per]
        conversations = [_conversation(p) for p in chunk]
        [host] = encode_micro_batches(run.processor, conversations * 2, [p.chosen for p in chunk] +
                                      [p.rejected for p in chunk], 2 * len(chunk), **buckets(run))
        unused = place(np.zeros(2 * len(chunk), np.float32), run.mesh)
        out.append(TrainBatch(device_inputs(run.model, host, run.mesh), unused, unused, unused, unused))
    return out


def evaluate_rm(run: Run, held_out: Sequence[Any], batch_size: int = 64) -> dict[str, float]:
    """Held-out pairwise accuracy (chosen scored strictly higher), mean margin, and score spread."""
    items = [held_out[i] for i in range(len(held_out))]
    conversations = [_conversation(p) for p in items]
    scores = score_answers(run.model, run.processor, conversations * 2,
                           [p.chosen for p in items] + [p.rejected for p in items], batch_size=batch_size,
                           mesh=run.mesh, **buckets(run))
    chosen, rejected = scores[:len(items)], scores[len(items):]
    return {"accuracy": float(np.mean(chosen > rejected)), "margin": float(np.mean(chosen - rejected)),
            "score_std": float(scores.std()), "pairs": float(len(items))}


def rm_phase(run: Run, pairs: Sequence[Any], total_steps: int, *, evaluate=None) -> Phase:
    """Bradley-Terry training of ``run.model`` (a ``QwenVLRewardModel``) on preference pairs."""
    cfg = run.cfg
    optimizer, schedule = make_phase_optimizer(run, cfg.optimizer.lr, total_steps, cfg.optimizer.warmup_ratio)
    iterator = make_iterator(run, len(pairs), cfg.trainer.batch_size)
    loss_cfg = LossConfig(kind="bt")

    def step_fn(step: int) -> dict:
        batch = [pairs[i] for i in distributed.gather_indices(iterator.next_indices())]
        result = accumulate_and_update(run.model, optimizer, pair_micro_batches(run, batch), loss_cfg)
        metrics = dict(result.metrics)
        metrics["pairs"] = metrics.pop("tokens")
        return {**metrics, "lr": float(schedule(step)), "updates_skipped": float(not result.applied),
                "epoch": float(iterator.epoch)}

    return Phase("rm", total_steps, step_fn, optimizer, iterator, evaluate, cfg.trainer.eval_every)


__all__ = ["ScoreReward", "evaluate_rm", "pair_micro_batches", "rm_phase", "score_answers"]
