"""A procedurally generated image-question world with known ground truth, for toy-scale checks.

``world``: scenes, images, questions, the checker ``answer`` and the true ``quality`` of any answer.
``generate``: RL prompts, preference pairs, point-wise answers, GRM and policy warm-start texts, the
tokenizer corpus and parquet export in the Align-Anything schema.
"""

from grlhf.data.synthetic.generate import (
    SyntheticConfig,
    export_parquet,
    grm_trace,
    grm_traces,
    item_rng,
    pointwise,
    pointwise_item,
    policy_answer,
    policy_warmstart,
    preference_pair,
    preference_pairs,
    rl_prompt,
    rl_prompts,
    systematic_error,
    training_corpus,
)
from grlhf.data.synthetic.world import (
    QUESTION_KINDS,
    Question,
    Scene,
    Shape,
    answer,
    judge_scores,
    parse_question,
    perturb,
    quality,
    render,
    sample_question,
    sample_scene,
)

__all__ = [
    "QUESTION_KINDS", "Question", "Scene", "Shape", "SyntheticConfig", "answer", "export_parquet",
    "grm_trace", "grm_traces", "item_rng", "judge_scores", "parse_question", "perturb", "pointwise",
    "pointwise_item", "policy_answer", "policy_warmstart", "preference_pair", "preference_pairs",
    "quality", "render", "rl_prompt", "rl_prompts", "sample_question", "sample_scene", "systematic_error",
    "training_corpus",
]
