"""The judge prompt: the paper's template, one-pass filling, principles option, chat messages."""

import pytest

from grlhf.reward import DEFAULT_JUDGE_TEMPLATE, build_judge_prompt, judge_messages
from grlhf.reward.prompt import JUDGE_TEMPLATES, judge_template


def test_default_template_is_the_papers():
    assert DEFAULT_JUDGE_TEMPLATE.startswith("You are a skilled expert at scoring responses.")
    assert "<image>{prompt}" in DEFAULT_JUDGE_TEMPLATE
    assert DEFAULT_JUDGE_TEMPLATE.endswith(r"e.g., \boxed{x, x} if there exists 2 responeses>.")


def test_fills_fields_once_and_keeps_braces_in_texts():
    text = build_judge_prompt("What is {response_2}?", "A {prompt}", "B \\boxed{1, 2}")
    assert "<image>What is {response_2}?\n" in text
    assert "# Response 1: A {prompt}\n# Response 2: B \\boxed{1, 2}\n" in text
    assert "Evaluation Principles" not in text
    assert text.count("{") == text.count("}")


@pytest.mark.parametrize("name", sorted(JUDGE_TEMPLATES))
def test_named_templates_have_every_field(name):
    template = judge_template(name)
    text = build_judge_prompt("What colour?", "red", "blue", principles="Be exact.", template=template)
    assert "<image>What colour?\n" in text and "# Response 1: red\n# Response 2: blue\n" in text
    assert "Be exact." in text and "{" not in text.replace("\\boxed{x, x}", "")


def test_minimal_template_is_the_fields_under_one_line():
    text = build_judge_prompt("What colour is the circle?", "red", "blue", template=judge_template("minimal"))
    assert text == ("Score the responses 1 to 10.\n<image>What colour is the circle?\n"
                    "# Response 1: red\n# Response 2: blue\n")


def test_principles_are_optional():
    text = build_judge_prompt("Q", "A", "B", principles="  Be safe.\n")
    assert "#### Evaluation Principles ####\nBe safe.\n#### Responses to be Scored ####" in text


def test_custom_template_must_have_the_fields():
    with pytest.raises(ValueError, match="response_2"):
        build_judge_prompt("Q", "A", "B", template="{prompt} {response_1}")
    assert build_judge_prompt("Q", "A", "B", template="{prompt}|{response_1}|{response_2}") == "Q|A|B"


def test_messages_put_the_image_where_the_placeholder_was():
    [message] = judge_messages("Q", "A", "B", image="cat.png")
    assert message["role"] == "user"
    kinds = [item["type"] for item in message["content"]]
    assert kinds == ["text", "image", "text"]
    assert message["content"][1]["image"] == "cat.png"
    assert message["content"][0]["text"].endswith("#### Conversation Context ####\n")
    assert message["content"][2]["text"].startswith("Q\n")


def test_text_only_messages_drop_the_placeholder():
    [message] = judge_messages("Q", "A", "B")
    assert [item["type"] for item in message["content"]] == ["text"]
    assert "<image>" not in message["content"][0]["text"]
