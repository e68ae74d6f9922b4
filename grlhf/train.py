"""``python -m grlhf.train [CONFIG.yaml ...] [key=value ...]``: train with the merged configuration.

No arguments: the embedded default ``configs/default.yaml`` (the tiny model on the synthetic task).
``trainer.dry_run=true`` builds the abstract model, the sharding plan and the data pipeline without
weights and prints parameter counts and a per-device memory estimate.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Sequence

from grlhf.config import ConfigError, load_config


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        cfg = load_config(args)
    except ConfigError as error:
        print(f"grlhf.train: {error}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    for noisy in ("absl", "jax._src.xla_bridge"):  # orbax logs every save step at INFO
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from grlhf.trainer import run

    try:
        summary = run(cfg, args)
    except (ConfigError, FileNotFoundError) as error:
        print(f"grlhf.train: {error}", file=sys.stderr)
        return 2
    if cfg.trainer.dry_run:
        print(summary["report"])
    else:
        from grlhf.trainer.distributed import is_main

        if is_main():  # a multi-process run prints its summary once
            print(json.dumps(summary, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
