"""A tiny checkpoint directory (tokenizer, processor, weights) built once per test session."""

import pytest

from grlhf.tiny import write_tiny_checkpoint

CORPUS = ["What colour is the circle? red", "How many shapes are there? 2",
          "Describe the image. a blue square and a red circle on the left"] * 20


@pytest.fixture(scope="session", params=["qwen2_vl", "qwen2_5_vl"])
def tiny_dir(request, tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp(request.param), request.param, seed=0, corpus=CORPUS)
