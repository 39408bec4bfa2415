"""The jaxfm command's persistent compilation cache: where it goes, that it is written and read
back, and that it can be turned off."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from jaxfm.compilation_cache import compilation_cache_dir

PROGRAM = """
import sys, jax, jax.numpy as jnp
from jaxfm.compilation_cache import enable_compilation_cache
print(enable_compilation_cache())
f = jax.jit(lambda x: jnp.sin(x) @ jnp.cos(x).T)
f(jnp.ones((64, 64))).block_until_ready()
"""


def _run(env_extra: dict, tmp_path: Path) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAXFM_COMPILATION", "JAX_"))}
    env.update(env_extra, HOME=str(tmp_path / "home"), JAX_PLATFORMS="cpu")
    # min compile time 0 so the tiny program is cached
    prog = PROGRAM.replace(
        "f = jax.jit",
        "jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)\nf = jax.jit",
    )
    out = subprocess.run(
        [sys.executable, "-c", prog], env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_choice_of_folder():
    assert compilation_cache_dir({"JAXFM_COMPILATION_CACHE": "off"}) is None
    assert compilation_cache_dir({"JAXFM_COMPILATION_CACHE": "0"}) is None
    assert compilation_cache_dir({"JAXFM_COMPILATION_CACHE": "/c"}) == Path("/c")
    assert compilation_cache_dir({"JAX_COMPILATION_CACHE_DIR": "/j", "HOME": "/h"}) == Path("/j")
    assert compilation_cache_dir({"XDG_CACHE_HOME": "/x", "HOME": "/h"}) == Path("/x/jaxfm/xla")
    assert compilation_cache_dir({"HOME": "/h"}) == Path("/h/.cache/jaxfm/xla")


def test_programs_are_written_and_reused(tmp_path):
    cache = tmp_path / "cache"
    assert _run({"JAXFM_COMPILATION_CACHE": str(cache)}, tmp_path) == str(cache)
    entries = sorted(p.name for p in cache.iterdir())
    assert entries, "nothing was cached"
    _run({"JAXFM_COMPILATION_CACHE": str(cache)}, tmp_path)  # a second process hits the cache
    assert sorted(p.name for p in cache.iterdir()) == entries


def test_default_folder_is_under_home_and_off_writes_nothing(tmp_path):
    assert _run({}, tmp_path) == str(tmp_path / "home" / ".cache" / "jaxfm" / "xla")
    assert any((tmp_path / "home" / ".cache" / "jaxfm" / "xla").iterdir())
    other = tmp_path / "other"
    other.mkdir()
    assert _run({"JAXFM_COMPILATION_CACHE": "off"}, other) == "None"
    assert not (other / "home").exists()


def test_unusable_folder_does_not_stop_a_run(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert _run({"JAXFM_COMPILATION_CACHE": str(blocker / "sub")}, tmp_path) == "None"
