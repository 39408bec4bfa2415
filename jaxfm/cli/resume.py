"""``--resume`` with only ``--workdir``: the run's config comes back from ``WORKDIR/run.json``.

Every trainer writes ``WORKDIR/run.json`` as ``{KEY: identity, "outputs": {...}}``: the
identity is the config a resume must repeat (what the checkpoint's ``run_info`` holds), the
outputs are settings a resume may change (checkpoint cadence, save paths). A resuming command
rebuilds its config from the identity; a flag given explicitly must equal the recorded value,
or the command stops and names the flag, both values and the file.

:func:`given_dests` tells which flags were typed (not defaulted), by parsing the command line
once more with every default suppressed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["check_given", "config_from_dict", "given_dests", "read_run_json"]


def _all_parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    out = [parser]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):
                out.extend(_all_parsers(sub))
    return out


def given_dests(parser: argparse.ArgumentParser, argv: Sequence[str]) -> set[str]:
    """The ``dest`` of every option that appears on ``argv`` (parsed with defaults suppressed)."""
    parsers = _all_parsers(parser)
    saved = [(p, dict(p._defaults), [(a, a.default) for a in p._actions]) for p in parsers]
    try:
        for p in parsers:
            p._defaults.clear()
            for a in p._actions:
                a.default = argparse.SUPPRESS
        namespace, _ = parser.parse_known_args(list(argv))
    finally:
        for p, defaults, actions in saved:
            p._defaults.update(defaults)
            for a, default in actions:
                a.default = default
    return set(vars(namespace))


def read_run_json(workdir: str | Path, key: str) -> tuple[dict, dict]:
    """``(identity, outputs)`` recorded in ``WORKDIR/run.json`` under ``key``.

    Raises:
      FileNotFoundError: no run.json (says which flags to pass instead).
      ValueError: a run.json of another command (names the command that wrote it).
    """
    path = Path(workdir) / "run.json"
    if not path.exists():
        raise FileNotFoundError(
            f"--resume: {path} does not exist, so the run's settings are unknown; pass the "
            "original flags (--data, --exclude, ...) or the --workdir of a run started by "
            "this jaxfm version"
        )
    try:
        info = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"--resume: {path} is not valid JSON ({e})") from e
    if key not in info:
        other = ", ".join(k for k in info if k != "outputs") or "nothing"
        raise ValueError(f"--resume: {path} records a {other} run, not {key}; check --workdir")
    return dict(info[key]), dict(info.get("outputs", {}))


def config_from_dict(cls, d: dict[str, Any]):
    """The frozen config dataclass ``cls`` from its ``dataclasses.asdict`` form (JSON-read).

    Nested config dataclasses are rebuilt; lists become tuples where the field is a tuple.

    Raises:
      ValueError: keys that ``cls`` has no field for (a run.json of another version).
    """
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown recorded fields {unknown}")
    kwargs = {}
    for name, value in d.items():
        tp = hints[name]
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        union = typing.get_origin(tp) in (typing.Union, types.UnionType)
        base = args[0] if union and args else tp
        if dataclasses.is_dataclass(base) and isinstance(value, dict):
            value = config_from_dict(base, value)
        elif typing.get_origin(base) is tuple and isinstance(value, list):
            value = tuple(value)
        kwargs[name] = value
    return cls(**kwargs)


def _path_value(obj, path: str):
    for part in path.split("."):
        if obj is None:  # a dict field without this key (e.g. no tokenizer overrides)
            return None
        obj = obj.get(part) if isinstance(obj, dict) else getattr(obj, part)
    return obj


def check_given(given: dict[str, str], from_flags, recorded, run_json: Path | str) -> None:
    """Raises if a typed flag's value differs from the recorded run's.

    Args:
      given: ``{flag spelling: config path}`` of the flags typed on the command line that belong
        to the run's identity (paths may go into dict fields, e.g. ``model_overrides.dtype``).
      from_flags: the config built from the command line.
      recorded: the config rebuilt from run.json.
      run_json: the file, for the message.

    Raises:
      ValueError: naming each differing flag with both values.
    """
    diffs = []
    for flag, path in given.items():
        mine, theirs = _path_value(from_flags, path), _path_value(recorded, path)
        if mine != theirs:
            diffs.append(f"{flag} {mine!r} (the run has {path}={theirs!r})")
    if diffs:
        raise ValueError(
            f"--resume: {'; '.join(diffs)} differ from the run recorded in {run_json}. Leave "
            "them out (or repeat the recorded values) to continue that run; a run with other "
            "settings needs its own --workdir"
        )
