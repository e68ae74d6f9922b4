"""Evaluation principles: the dataset's (text or file) before each row's own."""

import PIL.Image
import pytest

from grlhf.data.loaders import PreferencePair
from grlhf.data.principles import combine_principles, read_principles, with_principles


def test_read_principles_from_text_or_file(tmp_path):
    path = tmp_path / "principles.md"
    path.write_text("Be safe.\nBe helpful.\n")
    assert read_principles(file=str(path)) == "Be safe.\nBe helpful."
    assert read_principles("  Be brief. ") == "Be brief." and read_principles() is None
    with pytest.raises(ValueError, match="not both"):
        read_principles("x", str(path))
    with pytest.raises(FileNotFoundError, match="nowhere.md"):
        read_principles(file=str(tmp_path / "nowhere.md"))
    path.write_text("  \n")
    with pytest.raises(ValueError, match="empty"):
        read_principles(file=str(path))


def test_the_dataset_principles_come_before_the_row_principles():
    assert combine_principles("Be safe.", "Mind the colours.") == "Be safe.\n\nMind the colours."
    assert combine_principles(None, " row ") == "row" and combine_principles("all", None) == "all"
    assert combine_principles(None, "  ") is None
    image = PIL.Image.new("RGB", (2, 2))
    pairs = [PreferencePair("0", image, "q", "c", "r", "row rule"), PreferencePair("1", image, "q", "c", "r")]
    assert [p.principles for p in with_principles(pairs, "Be safe.")] == ["Be safe.\n\nrow rule", "Be safe."]
    assert with_principles(pairs, None) == pairs
