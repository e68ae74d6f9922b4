"""The dataset API in one place: loaders (``grlhf.data.loaders``), their lazy images (``grlhf.data.images``)
and batching (``grlhf.data.iteration``)."""

from grlhf.data.images import IMAGE_CHECKS, ImageSource
from grlhf.data.iteration import EpochIterator
from grlhf.data.loaders import (
    BAD_ROW_POLICIES,
    BEAVERTAILS_PREFERENCE_FIELDS,
    PAIR_FORMATS,
    BadRow,
    LoadReport,
    PairFields,
    PreferencePair,
    Prompt,
    PromptFields,
    ScoredAnswer,
    ScoredFields,
    list_files,
    load_preference_pairs,
    load_prompts,
    load_scored_answers,
    pair_fields,
)

__all__ = [
    "BAD_ROW_POLICIES",
    "BEAVERTAILS_PREFERENCE_FIELDS",
    "IMAGE_CHECKS",
    "PAIR_FORMATS",
    "BadRow",
    "EpochIterator",
    "ImageSource",
    "LoadReport",
    "PairFields",
    "PreferencePair",
    "Prompt",
    "PromptFields",
    "ScoredAnswer",
    "ScoredFields",
    "list_files",
    "load_preference_pairs",
    "load_prompts",
    "load_scored_answers",
    "pair_fields",
]
