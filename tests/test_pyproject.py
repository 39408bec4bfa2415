"""pyproject.toml promises only what is true: dependency floors that have what we use, no
links to repositories that do not exist."""

import re
import tomllib

from tests.conftest import REPO


def _project() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def _floor(name: str) -> tuple[int, ...]:
    (dep,) = [d for d in _project()["dependencies"] if re.match(rf"{name}\b", d)]
    return tuple(int(x) for x in dep.split(">=")[1].split("."))


def test_huggingface_hub_floor_has_the_hf_command_the_offline_hint_names():
    from converters.sources import _local_hint

    assert "`hf download " in _local_hint("owner/name", [])
    assert _floor("huggingface-hub") >= (0, 34)  # `hf` first shipped in huggingface_hub 0.34.0


def test_no_url_to_the_nonexistent_jaxfm_organisation():
    urls = _project().get("urls", {})
    assert not [u for u in urls.values() if "github.com/jaxfm/" in u]
