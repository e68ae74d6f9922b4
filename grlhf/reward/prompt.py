"""The GRM's judge prompt: the paper's default template, filled with a question and two responses."""

from __future__ import annotations

import re
from typing import Any, Optional

IMAGE_PLACEHOLDER = "<image>"

# The prompt of Generative RLHF-V's appendix, verbatim (including its typo "responeses").
DEFAULT_JUDGE_TEMPLATE = (
    "You are a skilled expert at scoring responses. You should first generate a list of potential criteria "
    "to evaluate given responses based on them.\n"
    "Given the context of the conversation (the last round is the User's query) and multiple responses from "
    "the Assistant, you need to generate the [Evaluation Criteria] to score the responses. Based on the "
    "criteria, state potential other specific criteria to the query, the weights of different criteria, "
    "and then provide an overall comprehensive score upon them.\n"
    "Each score is an integer between 1 and 10, with a higher score indicating that the response meets the "
    "relevant criteria more closely. For example, a score of 1 means the response does not meet the criteria "
    "at all, a score of 6 means the response meets only some parts, and a score of 10 means the response "
    "perfectly meets the evaluation criteria. Before scoring, please analyze step by step. Your scoring needs "
    "to be as strict as possible.\n"
    "#### Conversation Context ####\n"
    "<image>{prompt}\n"
    "{principles}"
    "#### Responses to be Scored ####\n"
    "# Response 1: {response_1}\n"
    "# Response 2: {response_2}\n"
    "#### Output Format Requirements ####\n"
    "Output with three lines\n"
    "Specific Criteria: <Other potential criteria specific to the query and the context, and the weights of "
    "each criteria>.\n"
    "Analysis: <Compare different responses based on given Criteria>.\n"
    "Scores: <the overall comprehensive score of all responses in order, separate by comma in the boxed, "
    "e.g., \\boxed{x, x} if there exists 2 responeses>."
)

# A short template with the same fields and output format, for small models and CPU runs (the embedded
# default): the paper's instructions cost ~470 tokens per judgment with the tiny tokenizer.
COMPACT_JUDGE_TEMPLATE = (
    "Score the two responses to the question about the image, each an integer between 1 and 10.\n"
    "#### Conversation Context ####\n"
    "<image>{prompt}\n"
    "{principles}"
    "#### Responses to be Scored ####\n"
    "# Response 1: {response_1}\n"
    "# Response 2: {response_2}\n"
    "Output Specific Criteria, Analysis and Scores: \\boxed{x, x}."
)
# The fields alone under one line of instruction, for a judge whose output format is taught by its warm start
# (the embedded default): 38 tokens with a colour question and two one-word answers against compact's 102, so
# a judgment with its trace fits a 160-token row instead of 256.
MINIMAL_JUDGE_TEMPLATE = (
    "Score the responses 1 to 10.\n"
    "<image>{prompt}\n"
    "{principles}"
    "# Response 1: {response_1}\n"
    "# Response 2: {response_2}\n"
)
JUDGE_TEMPLATES = {"paper": DEFAULT_JUDGE_TEMPLATE, "compact": COMPACT_JUDGE_TEMPLATE,
                   "minimal": MINIMAL_JUDGE_TEMPLATE}


def judge_template(name_or_text: str) -> str:
    """A named template (``paper``, ``compact``, ``minimal``) or a literal one with the three response fields."""
    if name_or_text in JUDGE_TEMPLATES:
        return JUDGE_TEMPLATES[name_or_text]
    missing = {"{prompt}", "{response_1}", "{response_2}"} - {f for f in ("{prompt}", "{response_1}", "{response_2}")
                                                             if f in name_or_text}
    if missing:
        raise ValueError(f"judge template {name_or_text[:40]!r} is neither one of {sorted(JUDGE_TEMPLATES)} nor a "
                         f"template with the fields {sorted(missing)}")
    return name_or_text


# Shown only when principles are given (the paper's Table 3 ablation; off by default).
PRINCIPLES_BLOCK = "#### Evaluation Principles ####\n{text}\n"

_FIELD = re.compile(r"\{(prompt|response_1|response_2|principles)\}")


def build_judge_prompt(
    question: str,
    response_1: str,
    response_2: str,
    *,
    principles: Optional[str] = None,
    template: str = DEFAULT_JUDGE_TEMPLATE,
) -> str:
    """Fill the template in one pass, so braces inside the texts are never re-read as fields.

    The template keeps its ``<image>`` placeholder; ``judge_messages`` turns it into an image item.
    """
    values = {
        "prompt": question,
        "response_1": response_1,
        "response_2": response_2,
        "principles": PRINCIPLES_BLOCK.format(text=principles.strip()) if principles else "",
    }
    missing = {"prompt", "response_1", "response_2"} - set(_FIELD.findall(template))
    if missing:
        raise ValueError(f"judge template lacks the field(s) {sorted(missing)}")
    return _FIELD.sub(lambda match: values[match.group(1)], template)


def judge_messages(
    question: str,
    response_1: str,
    response_2: str,
    *,
    image: Any = None,
    principles: Optional[str] = None,
    template: str = DEFAULT_JUDGE_TEMPLATE,
) -> list[dict[str, Any]]:
    """One user turn in the chat format of HF processors: text with the image where ``<image>`` was.

    ``image`` may be a PIL image, a path, or None (a text-only judgment drops the placeholder).
    """
    text = build_judge_prompt(question, response_1, response_2, principles=principles, template=template)
    before, found, after = text.partition(IMAGE_PLACEHOLDER)
    if not found or image is None:
        return [{"role": "user", "content": [{"type": "text", "text": before + after}]}]
    content: list[dict[str, Any]] = []
    if before:
        content.append({"type": "text", "text": before})
    content.append({"type": "image", "image": image})
    if after:
        content.append({"type": "text", "text": after})
    return [{"role": "user", "content": content}]
