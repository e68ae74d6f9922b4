"""A judge that reads the two responses out of the compact judge prompt and scores them by a word table."""

from __future__ import annotations

import re

from grlhf.rollout.base import Completion

_RESPONSES = re.compile(r"# Response 1: (.*)\n# Response 2: (.*)\n")


def prompt_text(request) -> str:
    return "".join(part.get("text", "") for message in request for part in message["content"]
                   if isinstance(part, dict))


class TableJudge:
    """``\\boxed{s1, s2}`` with ``s = table[response]`` (+ ``first_bonus`` for the first), or ``text`` verbatim."""

    def __init__(self, table=None, first_bonus: float = 0.0, text: str | None = None):
        self.table, self.first_bonus, self.text, self.calls = table or {}, first_bonus, text, 0

    def generate(self, requests, sampling):
        out = []
        for request in requests:
            self.calls += 1
            if self.text is not None:
                out.append([Completion([1], [0.0], self.text, "stop")] * sampling.n)
                continue
            first, second = _RESPONSES.search(prompt_text(request)).groups()
            a, b = self.table[first] + self.first_bonus, self.table[second]
            out.append([Completion([1], [0.0], f"Analysis: ok. Scores: \\boxed{{{a:g}, {b:g}}}", "stop")] * sampling.n)
        return out

    def metrics(self):
        return {}
