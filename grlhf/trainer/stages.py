"""What ``python -m grlhf.train`` runs for each ``trainer.stage``: the phases in order, then the exports.

``sft`` / ``grm``: the GRM's warm start, then (``grm``) RL with the rule reward. ``policy``: the policy's
warm start, then RL from the configured reward. ``pipeline`` (the embedded default): ``grm`` then
``policy`` judged by the trained GRM, each in a sub-directory, then ``report.md``. ``rm``: the score-only
baseline (a scalar head trained with Bradley-Terry on the same preference pairs).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Sequence

from flax import nnx

from grlhf.config import Config, ConfigError, load_config
from grlhf.trainer import grm, policy
from grlhf.trainer.backends import rollout_backend
from grlhf.trainer.loop import run_phase, start_run

log = logging.getLogger("grlhf.trainer")


def rl_steps(cfg: Config, num_items: int) -> int:
    """``trainer.steps``, or ``trainer.epochs`` passes over ``num_items`` in batches of ``trainer.batch_size``."""
    return cfg.trainer.steps or cfg.trainer.epochs * max(num_items // cfg.trainer.batch_size, 1)


def run_grm(cfg: Config) -> dict[str, Any]:
    """``stage=sft`` (warm start only) or ``stage=grm`` (warm start when ``sft.steps > 0``, then RL)."""
    pairs, held_out, traces = grm.preference_data(cfg)
    steps = cfg.sft.steps if cfg.trainer.stage == "sft" else rl_steps(cfg, len(pairs))
    if cfg.trainer.stage == "sft" and steps == 0:
        raise ConfigError("trainer.stage=sft needs sft.steps > 0")
    run = start_run(cfg, steps)
    began = time.perf_counter()
    sampler = rollout_backend(run)
    evaluate = grm.eval_fn(run, sampler, held_out) if held_out else None
    summary: dict[str, Any] = {"run_dir": str(run.dir)}
    if cfg.sft.steps > 0:
        summary["warm_start"] = run_phase(run, grm.warm_start_phase(run, traces, evaluate=evaluate))
        if cfg.trainer.export_hf:
            summary["warm_start_model"] = str(run.export("sft"))
    if cfg.trainer.stage == "grm":
        reference = nnx.clone(run.model) if cfg.algorithm.kl_coef > 0 else None
        phase = grm.grm_phase(run, sampler, pairs, reference, steps, evaluate=evaluate)
        phase.start_eval = summary.get("warm_start")  # the warm start's last evaluation is RL's step 0
        summary["rl"] = run_phase(run, phase)
        if cfg.trainer.export_hf:
            summary["model"] = str(run.export("grm"))
    summary["time_s"] = time.perf_counter() - began
    run.logger.close()
    return summary


def run_rm(cfg: Config) -> dict[str, Any]:
    """``stage=rm``: the backbone at ``model.path`` with a new scalar head (or the head saved beside it),
    trained on preference pairs with the Bradley-Terry loss, then exported with its head."""
    from grlhf.models.qwen_vl.reward_model import read_head, with_head
    from grlhf.trainer import rm

    pairs, held_out, _ = grm.preference_data(cfg)
    steps = rl_steps(cfg, len(pairs))
    run = start_run(cfg, steps)
    began = time.perf_counter()
    run.model = with_head(run.model, read_head(run.model_dir), seed=cfg.trainer.seed)  # a saved head continues
    if run.mesh is not None:  # the new head joins the backbone on the mesh
        from grlhf.models.qwen_vl.sharding import place_state

        place_state(run.model, run.mesh)
    evaluate = (lambda: rm.evaluate_rm(run, held_out)) if held_out else None
    summary: dict[str, Any] = {"run_dir": str(run.dir), "rm": run_phase(run, rm.rm_phase(run, pairs, steps,
                                                                                          evaluate=evaluate))}
    if cfg.trainer.export_hf:
        summary["model"] = str(run.export("rm"))
    summary["time_s"] = time.perf_counter() - began
    run.logger.close()
    return summary


def run_policy(cfg: Config) -> dict[str, Any]:
    """``stage=policy``: warm start when ``sft.steps > 0``, then RL from ``reward.source``."""
    prompts, held_out, answers = policy.prompt_data(cfg)
    steps = rl_steps(cfg, len(prompts))
    run = start_run(cfg, steps)
    began = time.perf_counter()
    sampler = rollout_backend(run)
    judge = policy.make_judge(cfg, run.mesh)
    max_tokens = cfg.rollout.max_tokens
    stops = cfg.rollout.stop_token_ids
    evaluate = (lambda: policy.evaluate_policy(sampler, held_out, max_tokens=max_tokens, stop_token_ids=stops)
                ) if held_out else None
    summary: dict[str, Any] = {"run_dir": str(run.dir)}
    if cfg.sft.steps > 0:
        summary["warm_start"] = run_phase(run, policy.warm_start_phase(run, answers, evaluate=evaluate))
        if cfg.trainer.export_hf:
            summary["warm_start_model"] = str(run.export("policy_sft"))
    reference = nnx.clone(run.model) if cfg.algorithm.kl_coef > 0 else None
    phase = policy.policy_phase(run, sampler, judge, prompts, reference, steps, evaluate=evaluate)
    phase.start_eval = summary.get("warm_start")
    summary["rl"] = run_phase(run, phase)
    if cfg.trainer.export_hf:
        summary["model"] = str(run.export("policy"))
    summary["time_s"] = time.perf_counter() - began
    run.logger.close()
    return summary


def stage_args(cfg_args: Sequence[str], stage_overrides: Sequence[str], *extra: str) -> list[str]:
    """A sub-run's arguments: the YAML files, the stage's overrides, the command line's, then ``extra``."""
    files = [a for a in cfg_args if "=" not in a]
    user = [a for a in cfg_args if "=" in a and not a.startswith(("trainer.stage=", "trainer.run_dir=",
                                                                   "experiment="))]
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


def run_pipeline(cfg: Config, args: Sequence[str]) -> dict[str, Any]:
    """The GRM (warm start + RL), then the policy (warm start + RL judged by that GRM), then the report."""
    from grlhf.trainer.report import write_report

    began = time.perf_counter()
    root = Path(cfg.trainer.run_dir or f"runs/pipeline-{time.strftime('%Y%m%d-%H%M%S')}").resolve()
    grm_cfg = load_config(stage_args(args, cfg.pipeline.grm, "trainer.stage=grm", f"trainer.run_dir={root / 'grm'}"))
    grm_summary = run_grm(grm_cfg)
    judge = grm_summary.get("model") or str(root / "grm" / "hf" / "grm")
    policy_cfg = load_config(stage_args(args, cfg.pipeline.policy, "trainer.stage=policy",
                                        f"trainer.run_dir={root / 'policy'}", f"reward.judge_path={judge}",
                                        *policy_init_args(cfg, grm_summary)))
    policy_summary = run_policy(policy_cfg)
    summary = {"run_dir": str(root), "grm": grm_summary, "policy": policy_summary,
               "time_s": time.perf_counter() - began}
    summary["report"] = str(write_report(root, summary))
    return summary


def run(cfg: Config, args: Sequence[str] = ()) -> dict[str, Any]:
    """Run ``cfg.trainer.stage`` (``args``: the command line, which a pipeline re-applies to each stage)."""
    if cfg.trainer.dry_run:
        from grlhf.trainer.dry_run import dry_run

        return {"report": dry_run(cfg)}
    if cfg.experiment == "n_scaling":
        from grlhf.trainer.experiments import n_scaling

        return n_scaling(cfg, args)
    if cfg.trainer.stage in ("sft", "grm"):
        return run_grm(cfg)
    if cfg.trainer.stage == "policy":
        return run_policy(cfg)
    if cfg.trainer.stage == "rm":
        return run_rm(cfg)
    if cfg.trainer.stage == "pipeline":
        return run_pipeline(cfg, args)
    raise ConfigError(f"trainer.stage={cfg.trainer.stage!r} is not implemented (available: sft, grm, policy, "
                      "rm, pipeline)")


__all__ = ["policy_init_args", "rl_steps", "run", "run_grm", "run_pipeline", "run_policy", "run_rm",
           "stage_args"]
