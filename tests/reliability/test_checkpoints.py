"""Checkpoints you can trust (issue 12, items 2, 3, 6 and the SIGINT / full-disk ones).

A toy linear regression on the real spine (make_train_step + fit + RunDirectory) keeps each
case to a second or two; every case ends by comparing the resumed run's whole loss history with
an uninterrupted run's, exactly.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxfm.train.checkpoint import (
    Checkpointer,
    CheckpointSaveError,
    CorruptCheckpointWarning,
    WorkdirError,
)
from jaxfm.train.optim import OptimizerConfig, make_optimizer
from jaxfm.train.step import create_state, make_train_step
from jaxfm.train.trainer import EpochBatches, fit, read_metrics

REPO = Path(__file__).resolve().parents[2]
STEPS = 8


def _data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 4)).astype(np.float32)
    y = (x @ np.arange(1.0, 5.0, dtype=np.float32)).astype(np.float32)

    def epoch(e):
        order = np.random.default_rng([1, e]).permutation(16)
        for s in range(0, 16, 8):
            yield {"x": x[order[s : s + 8]], "y": y[order[s : s + 8]]}

    return EpochBatches(epoch, 2)


def _loss(params, batch, rng, train):
    del rng, train
    err = batch["x"] @ params["w"] - batch["y"]
    return (err**2).mean(), {}


def _run(workdir, *, resume=False, overwrite=False, steps=STEPS, **kw):
    params = {"w": jnp.zeros(4)}
    opt = make_optimizer(OptimizerConfig(name="adam", learning_rate=0.1), params)
    state, shardings = create_state(params, opt)
    step = make_train_step(_loss, opt, state_shardings=shardings)
    return fit(
        state, step, _data(), total_steps=steps, rng=jax.random.key(0), workdir=workdir,
        checkpoint_every=1, keep=10, resume=resume, overwrite=overwrite, log_every=1,
        log_stream=None, progress=False, **kw,
    )  # fmt: skip


def _losses(workdir) -> list[float]:
    return [r["loss"] for r in read_metrics(workdir) if "loss" in r]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    wd = tmp_path_factory.mktemp("ref")
    _run(wd)
    return _losses(wd)


def _cut_after(tmp_path, reference, step: int) -> Path:
    """A run that stopped after ``step``: its checkpoints up to ``step`` and its log."""
    wd = tmp_path / "cut"
    _run(wd, steps=step)
    assert _losses(wd) == reference[:step]
    return wd


def _data_files(step_dir: Path) -> list[Path]:
    return [f for f in (step_dir / "state").rglob("*") if f.is_file() and f.stat().st_size > 64]


def _resume_and_check(wd, reference, bad_step: int):
    with pytest.warns(CorruptCheckpointWarning, match=f"step {bad_step}"):
        _run(wd, resume=True)
    assert _losses(wd) == reference  # runs to the end, re-saving the bad step
    assert (wd / "checkpoints" / "corrupt" / str(bad_step)).is_dir()
    assert (wd / "checkpoints" / str(STEPS)).is_dir()


def test_truncated_newest_checkpoint_is_set_aside_and_the_run_finishes(tmp_path, reference):
    wd = _cut_after(tmp_path, reference, 5)
    for f in _data_files(wd / "checkpoints" / "5"):
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 3])
    _resume_and_check(wd, reference, 5)


def test_bit_flipped_checkpoint_is_detected_by_its_digest(tmp_path, reference):
    wd = _cut_after(tmp_path, reference, 5)
    # A flipped region that still decodes: change the stored digests' view of the data by
    # rewriting the parameter array itself through orbax (a valid file with wrong contents).
    ck = Checkpointer(wd / "checkpoints", async_save=False)
    meta = ck.restore_meta(5)
    tree = ck._manager.restore(5)["state"]
    tree["train"]["params"]["w"] = np.asarray(tree["train"]["params"]["w"]) + np.float32(2.5e38)
    digests = json.loads((wd / "checkpoints" / "5" / "meta" / "metadata").read_text())["digests"]
    ck._manager.delete(5)
    import orbax.checkpoint as ocp

    ck._manager.save(
        5,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(tree), meta=ocp.args.JsonSave({**meta, "digests": digests})
        ),
        force=True,
    )
    ck.close()
    _resume_and_check(wd, reference, 5)


def test_corrupt_metadata_is_set_aside(tmp_path, reference):
    wd = _cut_after(tmp_path, reference, 5)
    (wd / "checkpoints" / "5" / "meta" / "metadata").write_text("{not json")
    _resume_and_check(wd, reference, 5)


def test_a_fresh_run_over_an_earlier_runs_checkpoints_is_refused(tmp_path, reference):
    wd = _cut_after(tmp_path, reference, 3)
    with pytest.raises(WorkdirError, match=r"--resume.*--overwrite"):
        _run(wd)
    _run(wd, overwrite=True)
    assert _losses(wd) == reference


def test_a_resume_with_other_settings_names_them(tmp_path, reference):
    wd = tmp_path / "w"
    _run(wd, steps=3, run_info={"lr": 0.1, "datasets": ["a", "b"]})
    with pytest.raises(WorkdirError, match=r"lr: 0.1 in the checkpoint's run, now 0.2") as e:
        _run(wd, resume=True, run_info={"lr": 0.2, "datasets": ["a", "c"]})
    assert "removed ['b'], added ['c']" in str(e.value)
    assert "repeat the original run's flags" in str(e.value)


def test_a_second_process_on_the_same_workdir_fails_at_once_naming_the_holder(tmp_path):
    wd = tmp_path / "w"
    holder = textwrap.dedent(f"""
        import time
        from jaxfm.train.checkpoint import RunDirectory
        d = RunDirectory({str(wd)!r})
        d.open(resume=False, overwrite=False)
        print("locked", flush=True)
        time.sleep(60)
    """)
    env = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu"}
    proc = subprocess.Popen([sys.executable, "-c", holder], stdout=subprocess.PIPE, env=env,
                            text=True)  # fmt: skip
    try:
        assert proc.stdout.readline().strip() == "locked"
        host = re.escape(socket.gethostname())
        named = rf"in use by another run \(pid {proc.pid} on host {host}\)"
        t0 = time.perf_counter()
        with pytest.raises(WorkdirError, match=named):
            _run(wd)
        assert time.perf_counter() - t0 < 10
    finally:
        proc.kill()
        proc.wait()
    _run(wd, steps=2)  # the lock dies with its holder (even on SIGKILL)


def _fail_saves(monkeypatch, steps):
    """The background commit of each step in ``steps`` fails as on a full disk: orbax's rename
    of the finished temporary directory raises ENOSPC in its save thread."""
    atomicity = pytest.importorskip("orbax.checkpoint._src.path.atomicity")
    finalize = atomicity.AtomicRenameTemporaryPath.finalize

    async def failing(self, *args, **kw):
        step = re.search(r"/(\d+)\.orbax-checkpoint-tmp", str(self.get()))
        if step and int(step[1]) in steps:
            raise OSError(28, "No space left on device")
        return await finalize(self, *args, **kw)

    monkeypatch.setattr(atomicity.AtomicRenameTemporaryPath, "finalize", failing)


def _is_a_usage_error(err: BaseException) -> None:
    # an OSError that is also a ValueError: the CLI reports it and exits 2, no traceback
    assert isinstance(err, CheckpointSaveError), repr(err)
    assert isinstance(err, OSError) and isinstance(err, ValueError) and err.errno == 28


def test_a_failed_async_save_stops_the_run_at_the_next_step(tmp_path, monkeypatch):
    import orbax.checkpoint as ocp

    calls = {"n": 0}

    def failing(self):
        calls["n"] += 1
        if calls["n"] >= 3:
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(ocp.CheckpointManager, "check_for_errors", failing)
    wd = tmp_path / "w"
    with pytest.raises(ValueError, match=r"saving the checkpoint of step \d+ in .* failed") as info:
        _run(wd)
    _is_a_usage_error(info.value)
    assert str(wd / "checkpoints") in str(info.value)  # names the workdir
    assert "No space left" in str(info.value)  # and the cause
    assert len(_losses(wd)) <= 3  # stopped right after the failure, not at the end


def test_a_failed_background_save_stops_the_run_and_resume_finishes(
    tmp_path, monkeypatch, reference
):
    wd = tmp_path / "w"
    _fail_saves(monkeypatch, {1})
    with pytest.raises(ValueError, match=r"checkpoint of step 1 in .* failed.*No space") as info:
        _run(wd)
    _is_a_usage_error(info.value)
    assert str(wd / "checkpoints") in str(info.value)
    assert len(_losses(wd)) <= 3
    monkeypatch.undo()  # the failed step is no checkpoint: the resumed run saves it again
    _run(wd, resume=True)
    assert _losses(wd) == reference


def test_a_failed_async_save_makes_jaxfm_pretrain_exit_2(tmp_path, monkeypatch, capsys):
    import jaxfm.train.graphfm_pretrain as graphfm_pretrain
    from jaxfm.cli import main

    wd = tmp_path / "w"
    _fail_saves(monkeypatch, {1})
    # the CLI's pretrain command on the real loop and run directory, with the toy model
    monkeypatch.setattr(graphfm_pretrain, "pretrain", lambda cfg, **kw: _run(wd))
    assert main(["pretrain", "--workdir", str(wd), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"jaxfm: error: saving the checkpoint of step 1 in {wd / 'checkpoints'}" in err
    assert "Traceback" not in err


def test_a_failed_last_save_is_not_ignored(tmp_path, monkeypatch):
    """The last step's save is still in flight when the loop ends: closing the run reports it."""
    wd = tmp_path / "w"
    _fail_saves(monkeypatch, {2})
    with pytest.raises(ValueError, match=r"checkpoint of step 2 in .* failed.*No space") as info:
        _run(wd, steps=2)
    _is_a_usage_error(info.value)
    assert len(_losses(wd)) == 2
    monkeypatch.undo()
    _run(wd, resume=True, steps=2)  # the lock was released; step 1 is the newest checkpoint
    assert len(_losses(wd)) == 2


def test_sigint_saves_like_sigterm_and_resume_finishes(tmp_path, reference):
    wd = tmp_path / "w"
    script = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        import test_checkpoints as t
        slow = t._data
        def data():
            d = slow()
            make = d.make_epoch
            def epoch(e):
                for b in make(e):
                    time.sleep(0.3)
                    yield b
            d.make_epoch = epoch
            return d
        t._data = data
        res = t._run({str(wd)!r})
        print("preempted", res.preempted, res.signal, flush=True)
    """)
    env = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu"}
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, env=env,
                            text=True)  # fmt: skip
    deadline = time.time() + 120
    while time.time() < deadline and len(_losses(wd)) < 2:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert f"preempted True {int(signal.SIGINT)}" in out
    saved = sorted(int(p.name) for p in (wd / "checkpoints").iterdir() if p.name.isdigit())
    assert saved and saved[-1] == len(_losses(wd)) < STEPS
    _run(wd, resume=True)
    assert _losses(wd) == reference
