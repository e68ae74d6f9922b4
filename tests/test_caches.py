"""The CLIs' persistent compilation cache: where it goes, the switch that turns it off, and that a second process
loads the first one's programs from it."""

import subprocess
import sys

from grlhf.caches import cache_dir, enable_compilation_cache

PROGRAM = """
import jax, jax.numpy as jnp
from grlhf.caches import enable_compilation_cache
print(enable_compilation_cache())
jax.jit(lambda x: jnp.tanh(x @ x.T).sum())(jnp.ones((8, 8))).block_until_ready()
"""


def test_cache_dir_follows_grlhf_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("GRLHF_CACHE", str(tmp_path))
    assert cache_dir() == tmp_path
    monkeypatch.setenv("GRLHF_COMPILATION_CACHE", "off")
    assert enable_compilation_cache() is None  # the switch: nothing configured


def _run(env: dict) -> str:
    return subprocess.run([sys.executable, "-c", PROGRAM], env=env, capture_output=True, text=True, check=True,
                          timeout=300).stdout.strip()


def test_a_second_process_reads_the_first_ones_programs(tmp_path):
    import os

    env = {k: v for k, v in os.environ.items() if k not in ("GRLHF_COMPILATION_CACHE", "JAX_COMPILATION_CACHE_DIR")}
    env["GRLHF_CACHE"] = str(tmp_path)
    assert _run(env) == str(tmp_path / "jax")
    written = sorted(p.name for p in (tmp_path / "jax").iterdir())
    assert any("jit__lambda" in name for name in written), written
    stamps = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "jax").iterdir()}
    _run(env)  # the same programs: loaded, nothing new written
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "jax").iterdir()} == stamps
    env["JAX_COMPILATION_CACHE_DIR"] = str(tmp_path / "mine")
    assert _run(env) == str(tmp_path / "mine")  # the user's own directory wins
