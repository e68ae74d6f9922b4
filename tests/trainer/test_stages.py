"""The stages' supervised warm start: ``sft.group_by_length`` (batches of examples of one kind) and
``sft.answer_steps`` (a phase of direct answers first)."""

from grlhf.config import load_config
from grlhf.data.synthetic import world
from grlhf.trainer.datasets import stage_data
from grlhf.trainer.runs import start_run
from grlhf.trainer.stages import example_size, stage_args, stage_phases

WARM_START = ["trainer.stage=sft", "sft.answer_steps=0", "sft.steps=4", "sft.batch_size=16",
              "sft.micro_batch_size=16", "sft.answer_fraction=0.5", "data.num_train=320", "data.num_eval=0",
              "reward.template=compact",
              "data.max_shapes=1", "data.question_kinds=[colour]", "data.trace_style=short",
              "logging.progress=false", "logging.tensorboard=false"]


def test_example_size_counts_the_text_of_the_conversation_and_the_target():
    conversation = [{"role": "system", "content": "be brief"},
                    {"role": "user", "content": [{"type": "image", "image": None}, {"type": "text", "text": "Why?"}]}]
    assert example_size((conversation, "Because.")) == len("be brief") + len("Why?") + len("Because.")


def test_grouped_warm_start_batches_hold_one_kind_of_example(tmp_path):
    """Direct answers (~70 tokens) and judgment traces (~215): grouped, a batch is all answers or all traces
    (but at most one where a megabatch's answers end), so answer batches pad to a short bucket."""
    mixed = {}
    for grouped in (False, True):
        cfg = load_config([*WARM_START, f"trainer.run_dir={tmp_path / str(grouped)}", f"sft.group_by_length={grouped}"])
        run = start_run(cfg, 4)
        phase = stage_phases(run, stage_data(cfg))[0].build()
        run.logger.close()
        warm = stage_data(cfg).warm
        sizes = [example_size(_example(cfg, warm[i])) for i in range(len(warm))]
        assert (phase.iterator.lengths is not None) == grouped
        if grouped:
            assert list(phase.iterator.lengths) == sizes
        batches = [phase.iterator.next_indices() for _ in range(phase.iterator.batches_per_epoch)]
        mixed[grouped] = sum(len({sizes[i] > 100 for i in batch}) > 1 for batch in batches)
    assert mixed[True] <= 1 and mixed[False] >= 18  # of 20 batches


def _example(cfg, item):
    from grlhf.reward.prompt import judge_template
    from grlhf.reward.verdicts import warm_start_example

    return warm_start_example(item, template=judge_template(cfg.reward.template),
                              answer_fraction=cfg.sft.answer_fraction, seed=cfg.data.seed)


def test_answer_steps_come_first_as_their_own_phase_of_direct_answers_only(tmp_path, monkeypatch):
    from grlhf.trainer import stages

    cfg = load_config([*WARM_START, f"trainer.run_dir={tmp_path}", "sft.answer_steps=3", "sft.answer_fraction=0"])
    run = start_run(cfg, 4)
    specs = stage_phases(run, stage_data(cfg))
    assert [(s.key, s.export) for s in specs] == [("answers", None), ("warm_start", "sft")]
    targets, encode = [], stages.sft_encode

    def recording_encode(run, make_example, items):
        targets.extend(make_example(item)[1] for item in items)
        return encode(run, make_example, items)

    monkeypatch.setattr(stages, "sft_encode", recording_encode)
    phase = stage_phases(run, stage_data(cfg))[0].build()
    assert (phase.name, phase.total_steps, phase.eval_fn) == ("sft_answers", 3, None)
    phase.step_fn(0)  # encodes its 16 examples and, ahead, the next step's
    run.logger.close()
    warm = stage_data(cfg).warm
    assert len(targets) == 32 and set(targets) <= {world.answer(warm[i]["scene"], warm[i]["question"])
                                                   for i in range(len(warm))}
    assert not any("Scores:" in t for t in targets)


def test_the_defaults_warm_start_rows_fit_a_160_token_bucket():
    """The embedded default's judge template (``minimal``) keeps a judgment with its trace within 160 tokens,
    the bucket its warm-start steps are timed at (with ``compact`` they pad to 256)."""
    from grlhf.data.batching import pick_bucket
    from grlhf.data.lengths import prompt_lengths, response_lengths
    from grlhf.data.processor import load_processor
    from grlhf.tiny import resolve_model_path

    base = load_config([])
    processor = load_processor(resolve_model_path(base.model.path))
    rows = {}
    for template in ("minimal", "compact"):
        cfg = load_config(stage_args([], base.pipeline.grm, "trainer.stage=grm", "data.num_train=200",
                                     "data.num_eval=0", f"reward.template={template}"))
        examples = [_example(cfg, item) for item in stage_data(cfg).warm]
        sizes = [p + r for p, r in zip(prompt_lengths(processor, [e[0] for e in examples]),
                                       response_lengths(processor.tokenizer, [e[1] for e in examples]))]
        rows[template] = pick_bucket(max(sizes), cfg.data.length_buckets)
    assert base.reward.template == "minimal" and rows == {"minimal": 160, "compact": 256}
