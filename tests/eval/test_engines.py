"""The remote engine: the API key comes from the named variable, goes only into the Authorization header and
never into results or logs; the vLLM-only request fields follow the switch."""

from __future__ import annotations

import json
import logging

import pytest

from grlhf.eval.__main__ import main
from grlhf.eval.engines import EngineSpec, api_key, generator
from grlhf.rollout.base import SamplingParams
from tests.rollout.test_openai_judge import serve  # noqa: F401 - the fake endpoint fixture

SECRET = "sk-test-never-written-4711"


def test_api_key_from_the_named_variable(monkeypatch):
    monkeypatch.setenv("GRLHF_EVAL_KEY", SECRET)
    assert api_key("GRLHF_EVAL_KEY") == SECRET and api_key(None) is None
    monkeypatch.delenv("GRLHF_EVAL_KEY")
    with pytest.raises(ValueError, match="GRLHF_EVAL_KEY"):
        api_key("GRLHF_EVAL_KEY")
    with pytest.raises(ValueError, match="URL"):
        EngineSpec(backend="remote")


@pytest.mark.parametrize("extras", [True, False])
def test_vllm_fields_only_for_a_vllm_endpoint(serve, monkeypatch, extras):
    server = serve()
    monkeypatch.setenv("GRLHF_EVAL_KEY", SECRET)
    engine = generator("judge", EngineSpec(backend="remote", url=server.url, api_key_env="GRLHF_EVAL_KEY",
                                           vllm_extras=extras))
    engine.generate([[{"role": "user", "content": [{"type": "text", "text": "q"}]}]],
                    SamplingParams(n=1, temperature=0.0, max_tokens=4, top_k=5, stop_token_ids=(7,)))
    body = server.bodies[0]
    assert server.auth == [f"Bearer {SECRET}"]
    assert {"return_token_ids", "top_k", "stop_token_ids"} <= set(body) if extras else \
        not {"return_token_ids", "top_k", "stop_token_ids"} & set(body)
    assert {"model", "messages", "n", "temperature", "max_tokens"} <= set(body)


def test_policy_rubric_judged_remotely_keeps_the_key_out_of_every_output(serve, eval_files, tmp_path, monkeypatch,
                                                                          capsys, caplog):
    server = serve(text=lambda key, choice: "The answer names a colour. Score: 4")
    monkeypatch.setenv("GRLHF_EVAL_KEY", SECRET)
    rubric = tmp_path / "rubric.txt"
    rubric.write_text("<image>Question: {question}\nAnswer: {answer}\nReference: {reference}\nGive Score: N.")
    out = tmp_path / "remote"
    caplog.set_level(logging.DEBUG)
    rc = main(["policy", "--policies", "warm=tiny", "--benchmarks", f"toy={eval_files['prompts']}",
               "--fields", "toy.ground_truth=reference", "toy.category=category", "--judge", "gpt-judge",
               "--judge-backend", "remote", "--judge-url", server.url, "--judge-api-key-env", "GRLHF_EVAL_KEY",
               "--judge-no-vllm-extras", "--rubric", str(rubric), "--answer-max-tokens", "4", "--bootstrap", "10",
               "--length-buckets", "256", "--out", str(out)])
    assert rc == 0
    results = json.loads((out / "results.json").read_text())
    toy = results["results"]["toy"]["warm"]
    assert toy["score"] == 4.0 and toy["scored"] == 3 and toy["failures"] == 0
    assert len(server.bodies) == 3 and all(b["model"] == "gpt-judge" for b in server.bodies)
    assert all("return_token_ids" not in b for b in server.bodies)
    assert all(a == f"Bearer {SECRET}" for a in server.auth)
    assert results["config"]["judge_api_key_env"] == "GRLHF_EVAL_KEY"
    captured = capsys.readouterr()
    written = "".join(p.read_text() for p in out.iterdir() if p.suffix in (".json", ".md"))
    for text in (written, captured.out, captured.err, caplog.text):
        assert SECRET not in text
