"""Shared fixtures: tiny HF models (PyTorch) and the same weights loaded into grlhf."""

import pytest

from grlhf.models.qwen_vl import from_pretrained
from tests.models.qwen_vl import tiny


@pytest.fixture(scope="module", params=tiny.FAMILIES)
def pair(request, tmp_path_factory):
    """(family, HF model, grlhf model) with identical weights, loaded through an HF directory."""
    family = request.param
    hf = tiny.hf_model(family)
    directory = tiny.save(hf, tmp_path_factory.mktemp(family))
    return family, hf, from_pretrained(directory)
