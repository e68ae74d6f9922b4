"""grlhf's on-disk caches under ``$GRLHF_CACHE`` (default ``~/.cache/grlhf``): the tiny checkpoint and JAX's
persistent compilation cache.

The command lines (``python -m grlhf.train``, ``python -m grlhf.eval``) turn the compilation cache on, so a
second run with the same shapes loads its compiled programs instead of compiling them again (README, "The
embedded default", states what it saves). ``JAX_COMPILATION_CACHE_DIR``, when set, wins;
``GRLHF_COMPILATION_CACHE=0`` turns it off (the tests do, so that they never write to a user's cache).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

COMPILATION_CACHE_ENV = "GRLHF_COMPILATION_CACHE"


def cache_dir() -> Path:
    """``$GRLHF_CACHE``, default ``~/.cache/grlhf``."""
    return Path(os.environ.get("GRLHF_CACHE", Path.home() / ".cache" / "grlhf"))


def enable_compilation_cache() -> Optional[Path]:
    """Point JAX's persistent compilation cache at ``$GRLHF_CACHE/jax`` (every program cached, however quick
    to compile: the tiny model's are a second or two each, and there are dozens); returns the directory, or
    None when ``GRLHF_COMPILATION_CACHE`` is 0/off/false. A ``JAX_COMPILATION_CACHE_DIR`` set by the user is
    kept."""
    if os.environ.get(COMPILATION_CACHE_ENV, "").lower() in ("0", "off", "false", "no"):
        return None
    import jax

    directory = os.environ.get("JAX_COMPILATION_CACHE_DIR") or str(cache_dir() / "jax")
    jax.config.update("jax_compilation_cache_dir", directory)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return Path(directory)


__all__ = ["COMPILATION_CACHE_ENV", "cache_dir", "enable_compilation_cache"]
