"""``grlhf.tiny`` on the synthetic task's corpus, its cache, and the synthetic files through the loaders."""

import numpy as np

from grlhf.data import synthetic
from grlhf.data.datasets import load_preference_pairs, load_prompts
from grlhf.data.processor import load_processor
from grlhf.tiny import cached_tiny_checkpoint, main


def test_cli_on_the_synthetic_corpus(tmp_path, capsys):
    assert main([str(tmp_path / "tiny"), "--family", "qwen2_5_vl", "--seed", "1"]) == 0
    assert "model.safetensors" in capsys.readouterr().out
    tokenizer = load_processor(tmp_path / "tiny").tokenizer
    item = synthetic.grm_trace(synthetic.SyntheticConfig(seed=5), 0)
    for text in (item["question"], item["trace"]):
        ids = tokenizer(text)["input_ids"]
        assert tokenizer.decode(ids) == text
        assert len(ids) < len(text) / 2  # the BPE learned the task's words


def test_cache_builds_once(tmp_path, monkeypatch):
    monkeypatch.setenv("GRLHF_CACHE", str(tmp_path))
    first = cached_tiny_checkpoint("qwen2_vl", seed=0)
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    assert cached_tiny_checkpoint("qwen2_vl", seed=0) == first
    assert (first / "model.safetensors").stat().st_mtime_ns == stamp
    assert first.parent == tmp_path and not list(tmp_path.glob(".building-*"))


def test_synthetic_parquet_through_the_loaders(tmp_path):
    cfg = synthetic.SyntheticConfig(seed=2, num_pairs=20, num_prompts=10)
    synthetic.export_parquet(cfg, tmp_path / "pairs.parquet", kind="preference")
    synthetic.export_parquet(cfg, tmp_path / "prompts.parquet", kind="prompts")
    pairs, report = load_preference_pairs(tmp_path / "pairs.parquet", format="align_anything")
    assert report.rows_used == 20 and report.rows_dropped == 0
    for pair, item in zip(pairs, synthetic.preference_pairs(cfg, 20)):
        better = item["response_1"] if item["overall_response"] == 1 else item["response_2"]
        assert pair.chosen == better and pair.question == item["question"]
        np.testing.assert_array_equal(np.asarray(pair.image.load()), np.asarray(item["image"].convert("RGB")))
    prompts, _ = load_prompts(tmp_path / "prompts.parquet", fields={"ground_truth": "answer"})
    assert [p.ground_truth for p in prompts] == [item["answer"] for item in synthetic.rl_prompts(cfg, 10)]
