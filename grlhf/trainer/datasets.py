"""A stage's data from the config: train items, held-out items and warm-start items, from the synthetic
task (built lazily, by index) or from files; and, for files, the rows too long to batch skipped and counted
(``fit_lengths``)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

from grlhf.config import Config, ConfigError
from grlhf.data import synthetic
from grlhf.data.conversations import prompt_conversation
from grlhf.data.iteration import LazyItems
from grlhf.data.lengths import LengthLimit, fitting
from grlhf.data.loaders import LoadReport, PreferencePair, Prompt, load_preference_pairs, load_prompts
from grlhf.data.principles import read_principles, with_principles
from grlhf.reward.prompt import judge_template
from grlhf.reward.verdicts import judge_conversation, verdict_target


@dataclass
class StageData:
    train: Sequence[Any]  # PreferencePair (stages sft, grm, rm) or Prompt (policy)
    held_out: Sequence[Any]
    # warm-start items: synthetic judgment traces or policy answers (dicts); on files, the GRM's preference
    # pairs themselves (GRM+SFT on verdict targets)
    warm: Sequence[Any]
    reports: dict[str, LoadReport] = field(default_factory=dict)  # files: "train" / "held_out" load reports


def synthetic_config(cfg: Config) -> synthetic.SyntheticConfig:
    """The synthetic task as configured under ``data``."""
    d = cfg.data
    return synthetic.SyntheticConfig(seed=d.seed, image_size=d.image_size, max_shapes=d.max_shapes,
                                     num_pairs=d.num_train, num_prompts=d.num_train, grm_error_rate=d.grm_error_rate,
                                     policy_error_rate=d.policy_error_rate, question_kinds=tuple(d.question_kinds),
                                     trace_style=d.trace_style, grm_error_mode=d.grm_error_mode,
                                     policy_error_mode=d.policy_error_mode,
                                     policy_error_cycle=tuple(d.policy_error_cycle))


def synthetic_pair(scfg: synthetic.SyntheticConfig, index: int, principles: Optional[str] = None) -> PreferencePair:
    item = synthetic.preference_pair(scfg, index)
    better, worse = ((item["response_1"], item["response_2"]) if item["overall_response"] == 1
                     else (item["response_2"], item["response_1"]))
    return PreferencePair(str(index), item["image"], item["question"], better, worse, principles)


def synthetic_prompt(scfg: synthetic.SyntheticConfig, index: int) -> Prompt:
    item = synthetic.rl_prompt(scfg, index)
    return Prompt(str(index), item["image"], item["question"], ground_truth=item["answer"], scene=item["scene"])


def split_off(records: list, num_eval: int) -> tuple[list, list]:
    """``(train, held-out)``: the last ``num_eval`` records are held out."""
    return records[:len(records) - num_eval], records[len(records) - num_eval:]


def _pair_files(cfg: Config, path: str, principles: Optional[str]) -> tuple[list, LoadReport]:
    d = cfg.data
    fields = {"principles": d.principles_field} if d.principles_field else {}
    if d.score_fields:
        fields.update(score_1=d.score_fields[0], score_2=d.score_fields[1])
    pairs, report = load_preference_pairs(path, d.format, fields or None, preference_field=d.preference_field,
                                          on_bad_row=d.on_bad_row)
    return with_principles(pairs, principles), report


def stage_data(cfg: Config) -> StageData:
    """Preference pairs for ``sft``, ``grm`` and ``rm``; prompts for ``policy``."""
    data, policy = cfg.data, cfg.trainer.stage == "policy"
    principles = read_principles(data.principles, data.principles_file)
    if data.source == "synthetic":
        scfg = synthetic_config(cfg)
        make = (lambda i: synthetic_prompt(scfg, i)) if policy else (lambda i: synthetic_pair(scfg, i, principles))
        warm = (lambda i: synthetic.policy_answer(scfg, i)) if policy else (lambda i: synthetic.grm_trace(scfg, i))
        return StageData(LazyItems(make, data.num_train), LazyItems(make, data.num_eval, start=data.num_train),
                         LazyItems(warm, data.num_train))
    if policy:
        records, report = load_prompts(data.train_files, on_bad_row=data.on_bad_row)
        held, held_report = (load_prompts(data.eval_files, on_bad_row=data.on_bad_row) if data.eval_files
                             else (None, None))
    else:
        records, report = _pair_files(cfg, data.train_files, principles)
        held, held_report = _pair_files(cfg, data.eval_files, principles) if data.eval_files else (None, None)
    if held is None and data.num_eval >= len(records):
        raise ConfigError(f"data.num_eval={data.num_eval} would hold out every usable row: data.train_files="
                          f"{data.train_files} has {len(records)} usable ({report.summary()}); set data.num_eval "
                          f"below {len(records)}, or give data.eval_files")
    train, held = (records, held) if held is not None else split_off(records, data.num_eval)
    if not train:
        kind = "prompts" if policy else "preference pairs"
        raise ConfigError(f"data.train_files={data.train_files}: no usable {kind} ({report.summary()})")
    reports = {"train": report, **({"held_out": held_report} if held_report is not None else {})}
    return StageData(train, held, [] if policy else train, reports)


def length_limit(cfg: Config) -> LengthLimit:
    """``data.max_prompt_length`` for prompts, the largest length bucket for prompt + response, and the
    rollout's ``max_tokens`` kept free after an RL prompt (a GRM's or a policy's)."""
    sampled = cfg.trainer.stage in ("grm", "policy")
    return LengthLimit(cfg.data.max_prompt_length, max(cfg.data.length_buckets),
                       cfg.rollout.max_tokens if sampled else 0)


def fit_lengths(cfg: Config, processor, data: StageData) -> StageData:
    """The stage's file data without the rows too long to batch (``grlhf.data.lengths``), each counted in
    its load report (reasons ``prompt_too_long`` / ``sequence_too_long``). A pair's rows: its judge prompt
    in both orders (the GRM; with the GRM+SFT target when the warm start runs) or its two answers (the RM);
    a prompt's: the policy's prompt. The synthetic task is left as it is."""
    if cfg.data.source == "synthetic":
        return data
    stage, limit, r = cfg.trainer.stage, length_limit(cfg), cfg.reward
    if stage == "policy":
        conversations, responses = (lambda p: [prompt_conversation(p.question, p.image, decode=False)]), None
    elif stage == "rm":
        conversations = lambda p: [prompt_conversation(p.question, p.image, decode=False)] * 2  # noqa: E731
        responses = lambda p: [p.chosen, p.rejected]  # noqa: E731
    else:
        template = judge_template(r.template)
        conversations = lambda p: [judge_conversation(p, swap, template=template, principles=r.principles)  # noqa: E731
                                   for swap in (False, True)]
        responses = (lambda p: [verdict_target(p, swap) for swap in (False, True)]) if cfg.sft.steps > 0 else None
    train = fitting(processor, list(data.train), limit, conversations, responses, data.reports.get("train"))
    held = data.held_out
    if held:
        # held out from the training files (no eval_files): counted in the train report
        held = fitting(processor, list(held), limit, conversations, responses,
                       data.reports.get("held_out", data.reports.get("train")))
    if not train:
        raise ConfigError(f"data.train_files={cfg.data.train_files}: every row is too long "
                          f"({data.reports['train'].summary()}); raise data.max_prompt_length / "
                          f"data.length_buckets or shorten the rows")
    return dataclasses.replace(data, train=train, held_out=held, warm=[] if stage == "policy" else train)


def data_summary(data: StageData) -> dict[str, Any]:
    """What the loads read, kept and dropped, by reason (``data.json`` of a run, and its summary)."""
    return {name: {"rows_read": rep.rows_read, "rows_used": rep.rows_used, "rows_dropped": rep.rows_dropped,
                   "dropped_by_reason": dict(sorted(rep.reason_counts.items()))}
            for name, rep in data.reports.items()}


__all__ = ["StageData", "data_summary", "fit_lengths", "length_limit", "stage_data", "synthetic_config",
           "synthetic_pair", "synthetic_prompt"]
