"""The command line of ``python -m grlhf.eval`` (argparse; ``--help`` on each sub-command)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Optional, Sequence

from grlhf.config import ConfigError
from grlhf.data.loaders import BEAVERTAILS_PREFERENCE_FIELDS
from grlhf.caches import enable_compilation_cache
from grlhf.errors import cli_main
from grlhf.host_memory import keep_freed_memory
from grlhf.eval.commands import JudgeSettings, PolicySettings, run_judge, run_pointwise, run_policy
from grlhf.eval.engines import BACKENDS, DEFAULT_LENGTH_BUCKETS, EngineSpec
from grlhf.eval.judge import parse_named, parse_set_spec
from grlhf.eval.loading import field_maps, load_benchmark, load_pair_set, load_scored_groups
from grlhf.eval.policy import DEFAULT_SCORE_PATTERN, check_rubric
from grlhf.reward.monitors import SELF_PRAISE_PHRASES
from grlhf.reward.prompt import judge_template


def _engine_args(parser: argparse.ArgumentParser, prefix: str = "", what: str = "the judges") -> None:
    dest = prefix.replace("-", "_")
    group = parser.add_argument_group(f"the engine of {what}")
    group.add_argument(f"--{prefix}backend", dest=f"{dest}backend", choices=BACKENDS, default="jax",
                       help="jax: the JAX sampler; vllm: an in-process vLLM engine; remote: an OpenAI-compatible "
                            "endpoint (the model is the served name)")
    group.add_argument(f"--{prefix}url", dest=f"{dest}url", help="remote: the endpoint's base URL")
    group.add_argument(f"--{prefix}api-key-env", dest=f"{dest}api_key_env",
                       help="remote: the environment variable holding the API key (the key is never written)")
    group.add_argument(f"--{prefix}no-vllm-extras", dest=f"{dest}vllm_extras", action="store_false",
                       help="remote: the endpoint is not vLLM; send OpenAI fields only")
    group.add_argument(f"--{prefix}dtype", dest=f"{dest}dtype", default="float32", choices=("float32", "bfloat16"))


def _spec(args: argparse.Namespace, prefix: str = "") -> EngineSpec:
    get = lambda key: getattr(args, f"{prefix}{key}")  # noqa: E731
    return EngineSpec(backend=get("backend"), dtype=get("dtype"), url=get("url"), api_key_env=get("api_key_env"),
                      vllm_extras=get("vllm_extras"), length_buckets=tuple(args.length_buckets))


def _common(parser: argparse.ArgumentParser, name: str) -> None:
    parser.add_argument("--out", type=Path, default=None, help=f"output folder (default eval/{name})")
    parser.add_argument("--template", default="paper",
                        help="judge prompt: paper | compact | minimal | a file holding a template with {prompt} "
                             "{response_1} {response_2} (the verdict must end in \\boxed{x, x})")
    parser.add_argument("--max-tokens", type=int, default=512, help="judge generation budget")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--principles", action="store_true", help="show a pair's principles in the judge prompt")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples (0: no intervals)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit", type=int, default=None, help="read at most this many rows per file")
    parser.add_argument("--fields", nargs="*", default=[], metavar="SET.KEY=COLUMN",
                        help="column names per data set (*.KEY applies to all), e.g. vlrb.chosen=better")
    parser.add_argument("--length-buckets", type=int, nargs="+", default=list(DEFAULT_LENGTH_BUCKETS),
                        help="the JAX engines' padded lengths; the largest is the longest prompt + generation")
    parser.add_argument("--max-prompt-length", type=int, default=None,
                        help="skip (and count) items with a longer prompt; always skipped: a prompt that leaves "
                             "less than the generation budget of the longest sequence (grlhf.eval.lengths)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m grlhf.eval", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    judge = sub.add_parser("judge", help="pairwise accuracy of judges on preference sets (Figure 5)")
    judge.add_argument("--judges", nargs="+", required=True, metavar="NAME=MODEL",
                       help="HF directories (GRM, GRM+SFT, GRM+RL, Instruct; or an RM export), or served names")
    judge.add_argument("--sets", nargs="+", required=True, metavar="NAME=PATH[:FORMAT]",
                       help="formats: align_anything (default), beavertails_v, jsonl_pairs")
    judge.add_argument("--preference-field", choices=BEAVERTAILS_PREFERENCE_FIELDS,
                       default="more_helpful_response_id", help="beavertails_v: which label is the preference")
    judge.add_argument("--label-values", type=int, nargs=2, default=[1, 2],
                       help="the label values meaning response_1 / response_2 is better")
    _common(judge, "judge")
    _engine_args(judge)

    pointwise = sub.add_parser("pointwise", help="correlation with human scores (Table 1)")
    pointwise.add_argument("--judges", nargs="+", required=True, metavar="NAME=MODEL")
    pointwise.add_argument("--scores", required=True, help="scored answers (parquet/JSONL): question, image, "
                                                           "answer, score (1-5); grouped by question and image")
    pointwise.add_argument("--reference-field", default=None,
                           help="column of a reference answer: the ablation's anchor (default: the first answer)")
    _common(pointwise, "pointwise")
    _engine_args(pointwise)

    policy = sub.add_parser("policy", help="policies' answers judged (Table 2), with reward-hacking monitors")
    policy.add_argument("--policies", nargs="+", required=True, metavar="NAME=MODEL")
    policy.add_argument("--benchmarks", nargs="+", required=True, metavar="NAME=PATH",
                        help="prompts (parquet/JSONL): question, image, optional reference and category "
                             "(map them: --fields NAME.ground_truth=reference NAME.category=category)")
    policy.add_argument("--judge", required=True, help="the judge: a GRM directory or a served model name")
    policy.add_argument("--opponent", default="reference", help="reference | the name of a baseline policy")
    policy.add_argument("--rubric", type=Path, default=None,
                        help="point-wise instead: a template file with {question} {answer} [{reference}]")
    policy.add_argument("--score-pattern", default=DEFAULT_SCORE_PATTERN,
                        help="rubric: a regex whose first group is the score (the last match counts)")
    policy.add_argument("--answer-max-tokens", type=int, default=512, help="the policies' answer budget")
    policy.add_argument("--self-praise-phrases", type=Path, default=None,
                        help="a text file, one phrase a line (default: grlhf.reward.monitors' list)")
    _common(policy, "policy")
    _engine_args(policy, "judge-", "the judge")
    _engine_args(policy, "", "the policies")
    return parser


def _template(value: str) -> str:
    path = Path(value)
    return judge_template(path.read_text() if path.is_file() else value)


def _settings(args: argparse.Namespace) -> JudgeSettings:
    return JudgeSettings(template=_template(args.template), max_tokens=args.max_tokens, batch_size=args.batch_size,
                         principles=args.principles, resamples=args.bootstrap, seed=args.seed,
                         max_prompt_length=args.max_prompt_length)


def _config(args: argparse.Namespace) -> dict:
    """The arguments as recorded in results.json (paths as text; the template by name or file)."""
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m grlhf.eval``: a user error (arguments, paths, data, an unreachable judge) is one line on stderr
    and exit status 2; ``--debug`` / ``GRLHF_DEBUG=1`` shows its traceback (grlhf/errors.py)."""
    return cli_main("grlhf.eval", evaluate, argv)


def evaluate(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(argv)
    keep_freed_memory()  # XLA:CPU's buffers reused, not faulted in (grlhf/host_memory.py)
    enable_compilation_cache()  # a second evaluation loads its compiled programs (grlhf/caches.py)
    if args.max_prompt_length is not None and args.max_prompt_length < 1:
        raise ConfigError(f"--max-prompt-length must be a positive number of tokens, got {args.max_prompt_length}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    out = args.out or Path("eval") / args.command
    maps = field_maps(args.fields)
    common = maps.get("*", {})
    if args.command == "judge":
        sets = {}
        for spec in args.sets:
            name, path, format = parse_set_spec(spec)
            sets[name] = load_pair_set(path, format, {**common, **maps.get(name, {})},
                                       preference_field=args.preference_field,
                                       label_values=tuple(args.label_values), limit=args.limit)
        payload = run_judge(out, parse_named(args.judges, "judge"), sets, _spec(args), _settings(args),
                            _config(args))
    elif args.command == "pointwise":
        data = load_scored_groups(args.scores, {**common, **maps.get("scores", {})},
                                  reference=args.reference_field, limit=args.limit)
        payload = run_pointwise(out, parse_named(args.judges, "judge"), data, _spec(args), _settings(args),
                                _config(args))
    else:
        benchmarks = {name: load_benchmark(path, {**common, **maps.get(name, {})}, limit=args.limit)
                      for name, path in parse_named(args.benchmarks, "benchmark").items()}
        phrases = (tuple(line.strip() for line in args.self_praise_phrases.read_text().splitlines() if line.strip())
                   if args.self_praise_phrases else SELF_PRAISE_PHRASES)
        settings = PolicySettings(max_tokens=args.answer_max_tokens, batch_size=args.batch_size,
                                  opponent=args.opponent,
                                  rubric=check_rubric(args.rubric.read_text()) if args.rubric else None,
                                  score_pattern=args.score_pattern, self_praise_phrases=phrases,
                                  max_prompt_length=args.max_prompt_length)
        payload = run_policy(out, parse_named(args.policies, "policy"), benchmarks, _spec(args), args.judge,
                             _spec(args, "judge_"), _settings(args), settings, _config(args))
    print((out / "table.md").read_text())
    print(json.dumps({"results": str(out / "results.json"), "time_s": round(payload["time_s"], 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
