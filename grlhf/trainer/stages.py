"""What ``python -m grlhf.train`` runs for each ``trainer.stage``: its phases in order, each exported.

``sft`` / ``grm``: the GRM's warm start on judgment traces, then (``grm``) RL with the rule reward on its
verdicts. ``policy``: the policy's warm start, then RL from ``reward.source``. ``rm``: the score-only
baseline (a scalar head trained with Bradley-Terry on the same preference pairs). ``pipeline`` (the
embedded default): ``grm`` then ``policy`` judged by the trained GRM, each in a sub-directory, then
``report.md``. Every stage is one ``run_stage``: a list of ``PhaseSpec`` built from the learners.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
from flax import nnx

from grlhf.config import Config, ConfigError, load_config
from grlhf.data.batching import encode_micro_batches
from grlhf.data.conversations import prompt_conversation
from grlhf.eval.pipeline import PipelineEval, evaluate_pipeline
from grlhf.models.qwen_vl.reward_model import read_head, with_head
from grlhf.models.qwen_vl.sharding import place_state
from grlhf.reward.evaluate import evaluate_judge, evaluate_policy
from grlhf.reward.monitors import SELF_PRAISE_PHRASES, length_score_correlation, self_praise_rate
from grlhf.reward.prompt import judge_template
from grlhf.reward.score_model import score_answers
from grlhf.reward.verdicts import (VerdictReward, answer_example, judge_case, sample_orders, verdict_example,
                                  warm_start_example)
from grlhf.trainer.batches import supervised_batches
from grlhf.trainer.datasets import StageData, data_summary, fit_lengths, stage_data, synthetic_config
from grlhf.trainer.distributed import is_main
from grlhf.trainer.learners import Budget, RLTask, Roles, buckets, rl_phase, supervised_phase
from grlhf.trainer.loop import Phase, run_phase
from grlhf.trainer.report import write_report
from grlhf.trainer.resume import check_resume, fresh_if_new, require_run_dir
from grlhf.trainer.roles import policy_reward, rollout_engine
from grlhf.trainer.runs import Run, start_run
from grlhf.trainer.step import LossConfig

log = logging.getLogger("grlhf.trainer")


@dataclass
class PhaseSpec:
    key: str  # the summary's key for the phase's last evaluation: answers | warm_start | rl | rm
    export: Optional[str]  # exported as <run>/hf/<export> after the phase (trainer.export_hf); None: not
    build: Callable[[], Phase]  # built when its turn comes (RL's reference is the warm-started model)


def rl_budget(cfg: Config, num_items: int, items_per_step: int) -> Budget:
    """``trainer.steps``, or ``trainer.epochs`` passes over ``num_items``, at ``optimizer.lr`` on
    ``optimizer.schedule``."""
    steps = cfg.trainer.steps or cfg.trainer.epochs * max(num_items // cfg.trainer.batch_size, 1)
    o = cfg.optimizer
    return Budget(steps, items_per_step, o.lr, o.warmup_ratio, cfg.trainer.eval_every, o.schedule)


def sft_budget(cfg: Config) -> Budget:
    """A supervised phase's budget: ``sft``'s steps, batch, lr, warm-up and schedule."""
    s = cfg.sft
    return Budget(s.steps, s.batch_size, s.lr, s.warmup_ratio, s.eval_every, s.schedule)


def example_size(example: tuple[list, str]) -> int:
    """Characters of an example's text (the conversation's text parts and the target; images not counted):
    the size ``sft.group_by_length`` groups by, a stand-in for its token count that needs no tokenizer."""
    conversation, target = example
    parts = [part for message in conversation for part in
             (message["content"] if isinstance(message["content"], list) else [{"text": message["content"]}])]
    return len(target) + sum(len(part.get("text", "")) for part in parts)


def sft_encode(run: Run, make_example: Callable[[Any], tuple[list, str]], items: list) -> list:
    """Supervised micro-batches of ``make_example(item) -> (conversation, target text)``."""
    examples = [make_example(item) for item in items]
    host = encode_micro_batches(run.processor, [e[0] for e in examples], [e[1] for e in examples],
                                run.cfg.sft.micro_batch_size, **buckets(run.cfg))
    return supervised_batches(run.model, host, run.mesh, run.cfg.model.loss_logits == "responses")


def pair_encode(run: Run, pairs: list) -> list:
    """Bradley-Terry micro-batches of ``micro_batch_size // 2`` pairs: chosen rows, then rejected rows."""
    per, out = max(run.cfg.algorithm.micro_batch_size // 2, 1), []
    for start in range(0, len(pairs), per):
        chunk = pairs[start:start + per]
        conversations = [prompt_conversation(p.question, p.image) for p in chunk] * 2
        out += supervised_batches(run.model, encode_micro_batches(
            run.processor, conversations, [p.chosen for p in chunk] + [p.rejected for p in chunk], 2 * len(chunk),
            **buckets(run.cfg)), run.mesh)
    return out


def evaluate_rm(run: Run, held_out: Sequence[Any], batch_size: int = 64) -> dict[str, float]:
    """Held-out pairwise accuracy (chosen scored strictly higher), mean margin, and score spread."""
    items = [held_out[i] for i in range(len(held_out))]
    conversations = [prompt_conversation(p.question, p.image) for p in items]
    scores = score_answers(run.model, run.processor, conversations * 2,
                           [p.chosen for p in items] + [p.rejected for p in items], batch_size=batch_size,
                           mesh=run.mesh, **buckets(run.cfg))
    chosen, rejected = scores[:len(items)], scores[len(items):]
    return {"accuracy": float(np.mean(chosen > rejected)), "margin": float(np.mean(chosen - rejected)),
            "score_std": float(scores.std()), "pairs": float(len(items))}


def true_accuracy(requests: list, completions: list) -> dict[str, float]:
    """The fraction of sampled answers the synthetic world calls right (off the task: nothing)."""
    truth = [p.true_quality(c.text) for p, group in zip(requests, completions) for c in group]
    return {"sample_true_accuracy": float(np.mean([q == 1.0 for q in truth]))} if truth and truth[0] is not None \
        else {}


def policy_monitor(phrases: Sequence[str], requests: list, completions: list, rewards: np.ndarray
                   ) -> dict[str, float]:
    """A policy step's reward-hacking monitors (self-praise rate, answer length against reward) and, on the
    synthetic task, the sampled answers' true accuracy. The judge's position bias comes with the reward."""
    texts = [c.text for group in completions for c in group]
    lengths = [len(c.token_ids) for group in completions for c in group]
    return {**true_accuracy(requests, completions), "self_praise_rate": self_praise_rate(texts, phrases),
            "length_score_correlation": length_score_correlation(lengths, np.asarray(rewards, np.float64))}


def rm_phases(run: Run, data: StageData, evaluate) -> list[PhaseSpec]:
    """The backbone at ``model.path`` with a new scalar head (or the head saved beside it)."""
    run.model = with_head(run.model, read_head(run.model_dir), seed=run.cfg.trainer.seed)
    if run.mesh is not None:  # the new head joins the backbone on the mesh
        place_state(run.model, run.mesh)
    budget = rl_budget(run.cfg, len(data.train), run.cfg.trainer.batch_size)
    return [PhaseSpec("rm", "rm", lambda: supervised_phase(run, "rm", budget, data.train, partial(pair_encode, run),
                                                           LossConfig(kind="bt"), evaluate=evaluate))]


def stage_phases(run: Run, data: StageData) -> list[PhaseSpec]:
    """The phases of ``trainer.stage``: a warm start when ``sft.steps > 0``, then RL (or the RM's training)."""
    cfg, stage = run.cfg, run.cfg.trainer.stage
    held, r = data.held_out, cfg.reward
    if stage == "rm":
        return rm_phases(run, data, partial(evaluate_rm, run, held) if held else None)
    rollout, judge_stage = rollout_engine(run), stage in ("sft", "grm")
    template, stops = judge_template(r.template), cfg.rollout.stop_token_ids
    # held-out evaluations generate reward.judge_batch prompts a call, as the pipeline's report does
    # (evaluate_run): a run's evaluations and its report then share their compiled decode programs
    if judge_stage:
        evaluate = partial(evaluate_judge, rollout, held, template=template, max_tokens=cfg.rollout.max_tokens,
                           principles=r.principles, stop_token_ids=stops, batch_size=r.judge_batch)
        if cfg.data.source == "files":  # GRM+SFT on the label's verdict (and the dataset's principles, scores)
            example = partial(verdict_example, template=template, principles=r.principles, seed=cfg.data.seed)
        else:
            example = partial(warm_start_example, template=template, answer_fraction=cfg.sft.answer_fraction,
                              seed=cfg.data.seed)
    else:
        evaluate = partial(evaluate_policy, rollout, held, max_tokens=cfg.rollout.max_tokens, stop_token_ids=stops,
                           batch_size=r.judge_batch)
        example = lambda item: (prompt_conversation(item["question"], item["image"]), item["answer"])  # noqa: E731
    evaluate = evaluate if held else None
    specs, sft_loss = [], LossConfig(kind="sft", head_chunk=cfg.model.head_chunk)
    if judge_stage and cfg.sft.answer_steps > 0 and cfg.data.source == "files":
        log.warning("sft.answer_steps=%d left out: preference files have no direct answers", cfg.sft.answer_steps)
    elif judge_stage and cfg.sft.answer_steps > 0:  # learning to see first, on short examples (config.SFTConfig)
        answers = replace(sft_budget(cfg), steps=cfg.sft.answer_steps, eval_every=0)
        specs.append(PhaseSpec("answers", None, lambda: supervised_phase(
            run, "sft_answers", answers, data.warm, partial(sft_encode, run, answer_example), sft_loss)))
    if cfg.sft.steps > 0:
        if not data.warm:
            raise ConfigError("the policy's warm start needs synthetic warm-start answers (data.source=synthetic); "
                              "real prompt files have none: set sft.steps=0")
        name = "sft" if judge_stage else "policy_sft"
        specs.append(PhaseSpec("warm_start", name, lambda: supervised_phase(
            run, name, sft_budget(cfg), data.warm, partial(sft_encode, run, example), sft_loss, evaluate=evaluate,
            lengths=[example_size(example(item)) for item in data.warm] if cfg.sft.group_by_length else None)))
    if stage == "sft":
        return specs
    if judge_stage:
        balanced = r.balanced_orders
        requests = lambda pairs, rng: [judge_case(p, swap, template=template, principles=r.principles)  # noqa: E731
                                       for p, swap in sample_orders(rng, pairs, balanced)]
        task = RLTask("grm", data.train, requests, VerdictReward(r.rule), evaluate)
        per_step = cfg.trainer.batch_size // (2 if balanced else 1)
    else:
        task = RLTask("policy", data.train, lambda prompts, rng: prompts, policy_reward(cfg, run.mesh), evaluate,
                      monitor=partial(policy_monitor, r.self_praise_phrases or SELF_PRAISE_PHRASES))
        per_step = cfg.trainer.batch_size

    def rl() -> Phase:
        with_ref = cfg.algorithm.kl_coef > 0 or cfg.algorithm.kl_in_reward.enabled
        roles = Roles(run.model, rollout, reference=nnx.clone(run.model) if with_ref else None)
        return rl_phase(run, roles, task, rl_budget(cfg, len(data.train), per_step))

    return [*specs, PhaseSpec("rl", stage, rl)]


def run_stage(cfg: Config) -> dict[str, Any]:
    """Run ``trainer.stage``'s phases in order, each resumable, each exported; ``{phase key: its last
    evaluation, <key>_model: its export, ...}`` (the RL phase's export is ``model``)."""
    if cfg.trainer.stage == "sft" and cfg.sft.steps == 0:
        raise ConfigError("trainer.stage=sft needs sft.steps > 0")
    if cfg.trainer.resume:
        check_resume(cfg)  # before loading anything: a missing run or a changed config is an error now
    data = stage_data(cfg)
    steps = cfg.sft.steps if cfg.trainer.stage == "sft" else rl_budget(cfg, len(data.train), 0).steps
    run = start_run(cfg, steps)
    began = time.perf_counter()
    summary: dict[str, Any] = {"run_dir": str(run.dir)}
    try:
        data = fit_lengths(cfg, run.processor, data)  # rows too long to batch: skipped and counted
        if data.reports:
            summary["data"] = data_summary(data)
            if run.is_main:
                (run.dir / "data.json").write_text(json.dumps(summary["data"], indent=2))
        last_eval: Optional[dict] = None
        for spec in stage_phases(run, data):
            phase = spec.build()
            phase.start_eval = last_eval  # the previous phase's last evaluation is this one's step 0
            last_eval = summary[spec.key] = run_phase(run, phase)
            if cfg.trainer.export_hf and spec.export:
                summary["model" if spec.key in ("rl", "rm") else f"{spec.key}_model"] = str(run.export(spec.export))
    finally:
        run.logger.close()
    summary["time_s"] = time.perf_counter() - began
    return summary


def stage_args(cfg_args: Sequence[str], stage_overrides: Sequence[str], *extra: str) -> list[str]:
    """A sub-run's arguments: the YAML files, the stage's overrides, the command line's, then ``extra``."""
    files = [a for a in cfg_args if "=" not in a]
    user = [a for a in cfg_args if "=" in a and not a.startswith(("trainer.stage=", "trainer.run_dir=",
                                                                   "experiment=", "experiment."))]
    return [*files, *stage_overrides, *user, *extra]


def policy_init_args(cfg: Config, grm_summary: dict[str, Any]) -> list[str]:
    """``model.path=<the GRM's warm start>`` when ``pipeline.policy_init=grm_warm_start`` (else none)."""
    if cfg.pipeline.policy_init == "base":
        return []
    warm = grm_summary.get("warm_start_model")
    if not warm:
        raise ConfigError("pipeline.policy_init=grm_warm_start needs the GRM's exported warm start "
                          "(pipeline.grm with sft.steps > 0 and trainer.export_hf=true)")
    return [f"model.path={warm}"]


def run_grm_stage(cfg: Config, args: Sequence[str], root: Path) -> dict[str, Any]:
    """The pipeline's GRM (``pipeline.grm`` overrides) in ``<root>/grm``."""
    return run_stage(load_config(stage_args(args, cfg.pipeline.grm, "trainer.stage=grm",
                                            f"trainer.run_dir={root / 'grm'}", *fresh_if_new(cfg, root / "grm"))))


def run_pipeline(cfg: Config, args: Sequence[str]) -> dict[str, Any]:
    """The GRM (warm start + RL), then the policy (warm start + RL judged by that GRM), then the report."""
    began = time.perf_counter()
    root = Path(cfg.trainer.run_dir or f"runs/pipeline-{time.strftime('%Y%m%d-%H%M%S')}").resolve()
    if cfg.trainer.resume:
        require_run_dir(cfg)
    grm_summary = run_grm_stage(cfg, args, root)
    judge = grm_summary.get("model") or str(root / "grm" / "hf" / "grm")
    policy_summary = run_stage(load_config(stage_args(
        args, cfg.pipeline.policy, "trainer.stage=policy", f"trainer.run_dir={root / 'policy'}",
        f"reward.judge_path={judge}", *policy_init_args(cfg, grm_summary), *fresh_if_new(cfg, root / "policy"))))
    summary = {"run_dir": str(root), "grm": grm_summary, "policy": policy_summary}
    if cfg.pipeline.evaluate and is_main():
        summary["evaluation"] = evaluate_run(cfg, args, root, grm_summary, policy_summary)
    summary["time_s"] = time.perf_counter() - began
    summary["report"] = str(write_report(root, summary))
    return summary


def evaluate_run(cfg: Config, args: Sequence[str], root: Path, grm: dict[str, Any], policy: dict[str, Any]
                 ) -> dict[str, Any]:
    """``grlhf.eval`` on the pipeline's exports and held-out synthetic data, into ``<root>/eval`` (the
    judges: GRM warm start and GRM+RL; the policies: warm start and RL; the judge budget of stage 2)."""
    if cfg.data.source != "synthetic":
        return {"skipped": "data.source=files (use python -m grlhf.eval on the run's exports)"}
    models = [grm.get("warm_start_model"), grm.get("model"), policy.get("warm_start_model"), policy.get("model")]
    if None in models:
        return {"skipped": "an exported model is missing (trainer.export_hf=false or sft.steps=0)"}
    grm_cfg = load_config(stage_args(args, cfg.pipeline.grm, "trainer.stage=grm"))
    policy_cfg = load_config(stage_args(args, cfg.pipeline.policy, "trainer.stage=policy",
                                        f"reward.judge_path={models[1]}"))
    r = policy_cfg.reward
    plan = PipelineEval(synthetic_config(grm_cfg), synthetic_config(policy_cfg), grm_cfg.data.num_train,
                        grm_cfg.data.num_eval, policy_cfg.data.num_train, policy_cfg.data.num_eval,
                        cfg.pipeline.eval_scored_questions, judge_template(r.template), r.judge_max_tokens,
                        policy_cfg.rollout.max_tokens, tuple(policy_cfg.data.length_buckets),
                        batch_size=r.judge_batch)
    result = evaluate_pipeline(root / "eval", {"GRM warm start": models[0], "GRM+RL": models[1]},
                               {"policy warm start": models[2], "GRLHF-V (RL)": models[3]}, plan)
    return {"sections": result["sections"], "timings": result["timings"]}


__all__ = ["PhaseSpec", "evaluate_run", "policy_init_args", "policy_monitor", "rl_budget", "run_grm_stage", "run_pipeline", "run_stage",
           "stage_args", "stage_phases"]
