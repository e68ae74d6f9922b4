"""``python -m grlhf.train [key=value ...]``.

Until the model-backed trainer lands (configs, the shared train step, the GRM and policy stages),
this runs the end-to-end demo of the functional core in ``grlhf.demo``; ``key=value`` arguments set
``DemoConfig`` fields (``steps=100 both_orders=false``), and an unknown key is an error naming it.
"""

from __future__ import annotations

import sys
from typing import Sequence

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from grlhf import demo


def parse_overrides(args: Sequence[str]) -> demo.DemoConfig:
    """Merge ``key=value`` arguments into the demo's dataclass schema (typed, validated by OmegaConf)."""
    bad = [arg for arg in args if "=" not in arg]
    if bad:
        raise SystemExit(f"grlhf.train: expected key=value arguments, got {bad}")
    schema = OmegaConf.structured(demo.DemoConfig)
    try:
        merged = OmegaConf.merge(schema, OmegaConf.from_dotlist(list(args)))
    except OmegaConfBaseException as error:
        raise SystemExit(f"grlhf.train: {error.msg if hasattr(error, 'msg') else error}") from None
    return OmegaConf.to_object(merged)


def main(argv: Sequence[str] | None = None) -> int:
    cfg = parse_overrides(sys.argv[1:] if argv is None else argv)
    history = demo.run(cfg)
    first, last = history[0], history[-1]
    print(f"[demo] done: expected quality {first['expected_quality']:.3f} -> {last['expected_quality']:.3f}, "
          f"greedy=best {first['greedy_best_fraction']:.2f} -> {last['greedy_best_fraction']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
