"""Test-wide settings: deterministic hypothesis runs (no deadline: jit compiles on first call)."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ["GRLHF_COMPILATION_CACHE"] = "0"  # the CLIs' persistent compilation cache: never a user's, in tests

from hypothesis import settings  # noqa: E402

settings.register_profile("default", max_examples=60, deadline=None, derandomize=True, print_blob=True)
settings.register_profile("thorough", max_examples=1000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))
