"""``python -m grlhf.train [CONFIG.yaml ...] [key=value ...] [--debug]``: train with the merged configuration.

No arguments: the embedded default ``configs/default.yaml`` (the tiny model on the synthetic task).
``trainer.dry_run=true`` builds the abstract model, the sharding plan and the data pipeline without
weights and prints parameter counts and a per-device memory estimate. Compiled programs are cached under
``$GRLHF_CACHE/jax`` (``grlhf/caches.py``; ``GRLHF_COMPILATION_CACHE=0`` turns it off), and freed host memory
is kept for reuse (``grlhf/host_memory.py``; ``GRLHF_MALLOC=default`` turns it off).

A user error (a config key or value, a YAML file, a path, a model whose weights do not fit its config,
data with no usable rows, a judge endpoint that does not answer) prints one message on stderr and exits
with status 2; ``--debug`` or ``GRLHF_DEBUG=1`` shows its traceback. Internal errors keep theirs.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Sequence

from grlhf.caches import enable_compilation_cache
from grlhf.config import load_config
from grlhf.errors import cli_main
from grlhf.host_memory import keep_freed_memory


def train(args: list[str]) -> int:
    """Loads the config from ``args`` and runs it; prints the summary (or the dry run's report)."""
    keep_freed_memory()  # before JAX starts its threads: XLA:CPU's buffers reused, not faulted in (host_memory.py)
    cfg = load_config(args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    for noisy in ("absl", "jax._src.xla_bridge"):  # orbax logs every save step at INFO
        logging.getLogger(noisy).setLevel(logging.WARNING)
    enable_compilation_cache()  # a second run loads its compiled programs (grlhf/caches.py)
    from grlhf.trainer import run

    summary = run(cfg, args)
    if cfg.trainer.dry_run:
        print(summary["report"])
    else:
        from grlhf.trainer.distributed import is_main

        if is_main():  # a multi-process run prints its summary once
            print(json.dumps(summary, indent=2, default=str))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return cli_main("grlhf.train", train, argv)


if __name__ == "__main__":
    sys.exit(main())
