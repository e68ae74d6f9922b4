"""Judging: the judge prompt, the score parser and the GRM's rule reward."""

from grlhf.reward.parse import parse_scores
from grlhf.reward.prompt import DEFAULT_JUDGE_TEMPLATE, build_judge_prompt, judge_messages
from grlhf.reward.rules import rule_reward, rule_rewards

__all__ = [
    "DEFAULT_JUDGE_TEMPLATE",
    "build_judge_prompt",
    "judge_messages",
    "parse_scores",
    "rule_reward",
    "rule_rewards",
]
