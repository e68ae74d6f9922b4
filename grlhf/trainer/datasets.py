"""A stage's data from the config: train items, held-out items and warm-start items, from the synthetic
task (built lazily, by index) or from files."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from grlhf.config import Config, ConfigError
from grlhf.data import synthetic
from grlhf.data.iteration import LazyItems
from grlhf.data.loaders import PreferencePair, Prompt, load_preference_pairs, load_prompts


@dataclass
class StageData:
    train: Sequence[Any]  # PreferencePair (stages sft, grm, rm) or Prompt (policy)
    held_out: Sequence[Any]
    warm: Sequence[dict]  # warm-start items (synthetic only): judgment traces, or policy answers


def synthetic_config(cfg: Config) -> synthetic.SyntheticConfig:
    """The synthetic task as configured under ``data``."""
    d = cfg.data
    return synthetic.SyntheticConfig(seed=d.seed, image_size=d.image_size, max_shapes=d.max_shapes,
                                     num_pairs=d.num_train, num_prompts=d.num_train, grm_error_rate=d.grm_error_rate,
                                     policy_error_rate=d.policy_error_rate, question_kinds=tuple(d.question_kinds),
                                     trace_style=d.trace_style, grm_error_mode=d.grm_error_mode,
                                     policy_error_mode=d.policy_error_mode)


def synthetic_pair(scfg: synthetic.SyntheticConfig, index: int) -> PreferencePair:
    item = synthetic.preference_pair(scfg, index)
    better, worse = ((item["response_1"], item["response_2"]) if item["overall_response"] == 1
                     else (item["response_2"], item["response_1"]))
    return PreferencePair(str(index), item["image"], item["question"], better, worse)


def synthetic_prompt(scfg: synthetic.SyntheticConfig, index: int) -> Prompt:
    item = synthetic.rl_prompt(scfg, index)
    return Prompt(str(index), item["image"], item["question"], ground_truth=item["answer"], scene=item["scene"])


def split_off(records: list, num_eval: int) -> tuple[list, list]:
    """``(train, held-out)``: the last ``num_eval`` records are held out."""
    return records[:len(records) - num_eval], records[len(records) - num_eval:]


def stage_data(cfg: Config) -> StageData:
    """Preference pairs for ``sft``, ``grm`` and ``rm``; prompts for ``policy``."""
    data, policy = cfg.data, cfg.trainer.stage == "policy"
    if data.source == "synthetic":
        scfg = synthetic_config(cfg)
        make = (lambda i: synthetic_prompt(scfg, i)) if policy else (lambda i: synthetic_pair(scfg, i))
        warm = (lambda i: synthetic.policy_answer(scfg, i)) if policy else (lambda i: synthetic.grm_trace(scfg, i))
        return StageData(LazyItems(make, data.num_train), LazyItems(make, data.num_eval, start=data.num_train),
                         LazyItems(warm, data.num_train))
    if policy:
        records, report = load_prompts(data.train_files, on_bad_row=data.on_bad_row)
        held = load_prompts(data.eval_files, on_bad_row=data.on_bad_row)[0] if data.eval_files else None
    else:
        records, report = load_preference_pairs(data.train_files, data.format, on_bad_row=data.on_bad_row)
        held = (load_preference_pairs(data.eval_files, data.format, on_bad_row=data.on_bad_row)[0]
                if data.eval_files else None)
    if held is None and data.num_eval >= len(records):
        raise ConfigError(f"data.num_eval={data.num_eval} would hold out every usable row: data.train_files="
                          f"{data.train_files} has {len(records)} usable ({report.summary()}); set data.num_eval "
                          f"below {len(records)}, or give data.eval_files")
    train, held = (records, held) if held is not None else split_off(records, data.num_eval)
    if not train:
        kind = "prompts" if policy else "preference pairs"
        raise ConfigError(f"data.train_files={data.train_files}: no usable {kind} ({report.summary()})")
    return StageData(train, held, [])


__all__ = ["StageData", "stage_data", "synthetic_config", "synthetic_pair", "synthetic_prompt"]
