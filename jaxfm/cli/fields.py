"""CLI flags derived from config dataclass fields: one default per setting, in its dataclass.

``add_field(parser, RunConfig, "epochs")`` registers ``--epochs`` with the type, the default and
the help text of ``RunConfig.epochs`` (from its docstring's ``Attributes:`` section), so
``--help`` shows the same default the Python API uses and the CLI has none of its own. Nested
configs are reached by a dotted path: ``add_field(p, RunConfig, "optimizer.learning_rate",
"--lr")``. :func:`config_kwargs` turns the parsed namespace back into constructor arguments.

Example:
  >>> import argparse, dataclasses
  >>> @dataclasses.dataclass(frozen=True, kw_only=True)
  ... class C:
  ...     '''Attributes:
  ...       steps: optimizer steps.
  ...     '''
  ...     steps: int = 300
  >>> p = argparse.ArgumentParser()
  >>> add_field(p, C, "steps")
  >>> p.parse_args([]).steps, p.parse_args(["--steps", "5"]).steps
  (300, 5)
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import types
import typing
from typing import Any

__all__ = [
    "add_field",
    "add_observability_flags",
    "config_kwargs",
    "field_default",
    "observability",
]


def _field(cls, name: str) -> dataclasses.Field:
    for f in dataclasses.fields(cls):
        if f.name == name:
            return f
    raise KeyError(f"{cls.__name__} has no field {name!r}")


def _resolve(cls, path: str) -> tuple[type, str, Any]:
    """``(owner class, field name, default)`` of a dotted field path."""
    *parents, name = path.split(".")
    owner = cls
    if not parents:
        return owner, name, field_default(cls, name)
    value = field_default(cls, parents[0])
    for parent in parents[1:]:
        value = getattr(value, parent)
    return type(value), name, getattr(value, name)


def field_default(cls, name: str) -> Any:
    """The default of ``cls.name`` (``default_factory`` called); MISSING if it has none."""
    f = _field(cls, name)
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


_ENTRY = re.compile(r"(\w+(?:\s*,\s*\w+)*):(?:\s+(.*))?$")


def _attribute_entries(doc: str) -> list[tuple[list[str], str]]:
    """``[(names, text)]`` of a Google-style docstring's ``Attributes:`` section.

    An entry starts at the section's entry indentation with ``name[, name2 ...]:``; more
    indented lines continue it (whatever they contain, ``word:`` included). The section ends at a
    line indented no deeper than ``Attributes:`` or at an entry-level line that is no entry.
    """
    lines = doc.expandtabs().splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip() == "Attributes:"), None)
    if start is None:
        return []
    # a docstring's first line carries no indentation: there, every later line is inside
    header_indent = len(lines[start]) - len(lines[start].lstrip()) if start else -1
    entries: list[tuple[list[str], list[str]]] = []
    entry_indent = None
    for line in lines[start + 1 :]:
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        if indent <= header_indent:
            break
        if entry_indent is None:
            entry_indent = indent
        if indent > entry_indent and entries:
            entries[-1][1].append(line.strip())
            continue
        m = _ENTRY.match(line.strip()) if indent == entry_indent else None
        if m is None:
            break
        names = [n.strip() for n in m.group(1).split(",")]
        entries.append((names, [m.group(2) or ""]))
    return [(names, " ".join(" ".join(text).split())) for names, text in entries]


def _doc(cls, name: str) -> str:
    """The full text of the ``Attributes:`` entry of ``cls`` that names ``name`` ("" if none)."""
    for names, text in _attribute_entries(cls.__doc__ or ""):
        if name in names:
            return text
    return ""


def _base_type(tp) -> tuple[Any, bool]:
    """``(scalar type, optional)`` of an annotation like ``int | None``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0], True
    return tp, False


def add_field(parser, cls, path: str, *flags: str, **kwargs) -> None:
    """Adds a flag for field ``path`` of ``cls`` (default, type and help from the dataclass).

    Args:
      parser: an argparse parser.
      cls: the config dataclass.
      path: field name, or dotted path into a nested config field.
      *flags: flag spellings (default ``--field-name``); the first is the canonical one.
      **kwargs: extra ``add_argument`` arguments (``choices``, ``help`` ...).
    """
    owner, name, default = _resolve(cls, path)
    hints = typing.get_type_hints(owner)
    tp, optional = _base_type(hints[name])
    flags = flags or (f"--{name.replace('_', '-')}",)
    help_text = kwargs.pop("help", None) or _doc(owner, name) or name.replace("_", " ")
    help_text = help_text.replace("%", "%%")  # argparse formats help with %
    dest = path.replace(".", "__")
    if default is dataclasses.MISSING:
        kwargs.setdefault("required", True)
        default = None
    if tp is bool:
        parser.add_argument(
            *flags, dest=dest, action=argparse.BooleanOptionalAction, default=default,
            help=help_text, **kwargs,
        )  # fmt: skip
        return
    origin = typing.get_origin(tp)
    if origin is tuple or origin is list:
        elem = typing.get_args(tp)[0]
        kwargs.setdefault("nargs", "+")
        kwargs.setdefault("type", elem)
        default = list(default) if default is not None else None
    elif optional and tp in (int, float):  # "none" gives None (e.g. --context-nodes none)
        kwargs.setdefault("type", _or_none(tp))
        help_text += " ('none': None)"
    elif tp in (int, float, str):
        kwargs.setdefault("type", tp)
    kwargs.setdefault("metavar", name.upper())
    parser.add_argument(*flags, dest=dest, default=default, help=help_text, **kwargs)


def _or_none(tp):
    """An argparse type: ``tp(text)``, or None for ``none`` (any case)."""

    def parse(text: str):
        return None if text.strip().lower() == "none" else tp(text)

    parse.__name__ = tp.__name__  # argparse names it in "invalid int value: 'x'"
    return parse


def config_kwargs(args: argparse.Namespace, cls, paths: list[str]) -> dict:
    """Constructor kwargs of ``cls`` from parsed ``args`` for the given field paths.

    Nested paths rebuild their nested config from its default with the parsed values replaced.
    Tuple fields get tuples back.
    """
    out: dict[str, Any] = {}
    nested: dict[str, dict[str, Any]] = {}
    for path in paths:
        value = getattr(args, path.replace(".", "__"))
        owner, name, _ = _resolve(cls, path)
        tp, _ = _base_type(typing.get_type_hints(owner)[name])
        if typing.get_origin(tp) is tuple and value is not None:
            value = tuple(value)
        if "." in path:
            head, rest = path.split(".", 1)
            nested.setdefault(head, {})[rest] = value
        else:
            out[path] = value
    for head, values in nested.items():
        base = field_default(cls, head)
        out[head] = dataclasses.replace(base, **values)
    return out


def add_observability_flags(parser) -> None:
    """``--tensorboard`` and ``--profile-steps A:B`` of the training commands (default off)."""
    parser.add_argument(
        "--tensorboard",
        action="store_true",
        help="also write the logged metrics as TensorBoard events in WORKDIR/tensorboard "
        "(needs pip install 'jaxfm[tensorboard]')",
    )
    parser.add_argument(
        "--profile-steps",
        metavar="A:B",
        help="record a jax.profiler trace of steps A..B (1-based, inclusive) into WORKDIR/profile",
    )


def observability(args) -> dict:
    """The ``tensorboard`` / ``profile_steps`` keyword arguments of a trainer, from the flags."""
    from jaxfm.train.trainer import parse_profile_steps

    return {
        "tensorboard": args.tensorboard,
        "profile_steps": parse_profile_steps(args.profile_steps),
    }
