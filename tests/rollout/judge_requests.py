"""Judge prompts that share prefixes, for the shared-prefix tests (``test_shared_prefix.py``, the 8-device
``tests/models/qwen_vl/sharded_check.py``)."""

import numpy as np
from PIL import Image

from grlhf.reward.prompt import COMPACT_JUDGE_TEMPLATE, judge_messages


def judge_requests(lone: int = 1) -> list:
    """Two groups of judge prompts (every ordered pair of three answers) and ``lone`` lone prompts."""
    rng = np.random.default_rng(0)
    images = [Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8))
              for h, w in [(56, 56), (56, 84)] + [(84, 56)] * lone]
    answers = ["red", "The circle is blue.", "green, I think"]
    requests = []
    for image, question in zip(images[:2], ["What colour is the circle?", "What colour is the square?"]):
        requests += [judge_messages(question, answers[i], answers[j], image=image, template=COMPACT_JUDGE_TEMPLATE)
                     for i in range(3) for j in range(3) if i != j]
    requests += [judge_messages("How many shapes?", "two", "three", image=image, template=COMPACT_JUDGE_TEMPLATE)
                 for image in images[2:]]
    return requests
