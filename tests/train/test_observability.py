"""fit's optional TensorBoard events and jax.profiler trace (off by default)."""

from __future__ import annotations

import builtins

import pytest

from jaxfm.train.trainer import parse_profile_steps
from tests.reliability.test_checkpoints import _losses, _run


def _scalar_steps(logdir, tag: str) -> list[int]:
    """Steps of ``tag``'s scalars in a TFRecord events file (read with tensorboardX's proto)."""
    import struct

    from tensorboardX.proto.event_pb2 import Event

    steps = []
    for path in sorted(logdir.glob("events.out.tfevents.*")):
        data, i = path.read_bytes(), 0
        while i < len(data):
            (n,) = struct.unpack("<Q", data[i : i + 8])
            event = Event.FromString(data[i + 12 : i + 12 + n])
            i += 12 + n + 4  # length, its crc, the record, its crc
            steps += [event.step for v in event.summary.value if v.tag == tag]
    return steps


def test_tensorboard_writes_an_events_file_with_the_logged_scalars(tmp_path):
    pytest.importorskip("tensorboardX")
    _run(tmp_path, steps=4, tensorboard=True)
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert _scalar_steps(tmp_path / "tensorboard", "loss") == [1, 2, 3, 4]
    assert len(_losses(tmp_path)) == 4  # metrics.jsonl as before


def test_tensorboard_missing_is_a_clear_error(tmp_path, monkeypatch):
    real = builtins.__import__

    def no_tbx(name, *a, **k):
        if name.startswith("tensorboardX"):
            raise ImportError("no tensorboardX")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_tbx)
    with pytest.raises(ValueError, match=r"pip install 'jaxfm\[tensorboard\]'"):
        _run(tmp_path, steps=2, tensorboard=True)
    _run(tmp_path, steps=2, overwrite=True)  # the workdir lock was released


def test_profile_steps_write_a_trace_directory(tmp_path):
    _run(tmp_path, steps=4, profile_steps=(2, 3))
    traces = list((tmp_path / "profile").rglob("*.xplane.pb"))
    assert traces, sorted(str(p) for p in (tmp_path / "profile").rglob("*"))
    assert len(_losses(tmp_path)) == 4


def test_parse_profile_steps():
    assert parse_profile_steps("10:20") == (10, 20) and parse_profile_steps(None) is None
    for bad in ("10", "a:b", "0:3", "5:2"):
        with pytest.raises(ValueError, match="--profile-steps"):
            parse_profile_steps(bad)
