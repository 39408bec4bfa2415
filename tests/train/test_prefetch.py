"""fit's input prefetch and deferred metrics (issue 15 item 5): the same steps as the synchronous
loop, checkpoints that record the consumed batches (not the prefetched ones), errors of the
prefetch thread raised by fit, no thread left behind, and metrics read only when needed."""

from __future__ import annotations

import os
import signal
import threading
import traceback

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxfm.train.trainer as trainer
from jaxfm.train.optim import OptimizerConfig, make_optimizer
from jaxfm.train.step import create_state, make_train_step
from jaxfm.train.trainer import EpochBatches, fit, read_metrics

STEPS = 10


class _Broken(RuntimeError):
    pass


def _data(*, fail_at=None, nan_at=None, signal_at=None):
    """8 micro-batches per epoch of a toy regression; the hooks act when drawing batch ``k``."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 4)).astype(np.float32)
    y = (x @ np.arange(1.0, 5.0, dtype=np.float32)).astype(np.float32)
    drawn = {"n": 0}

    def epoch(e):
        order = np.random.default_rng([1, e]).permutation(32)
        for s in range(0, 32, 4):
            k = drawn["n"]
            drawn["n"] += 1
            if k == fail_at:
                _explode(k)
            if k == signal_at:
                os.kill(os.getpid(), signal.SIGTERM)
            xb = x[order[s : s + 4]].copy()
            if k == nan_at:
                xb[0, 0] = np.nan
            yield {"x": xb, "y": y[order[s : s + 4]]}

    return EpochBatches(epoch, 8)


def _explode(k):
    raise _Broken(f"the batch source broke at batch {k}")


def _loss(params, batch, rng, train):
    del rng, train
    err = batch["x"] @ params["w"] - batch["y"]
    return (err**2).mean(), {"err_sum": jnp.abs(err).sum()}


def _run(data, workdir=None, *, steps=STEPS, **kw):
    params = {"w": jnp.zeros(4)}
    opt = make_optimizer(OptimizerConfig(name="adam", learning_rate=0.1), params)
    state, shardings = create_state(params, opt)
    step = make_train_step(_loss, opt, state_shardings=shardings)
    kw = {"log_every": 1, "log_stream": None, "progress": False, **kw}
    if workdir is not None:
        kw.update(workdir=workdir, checkpoint_every=kw.get("checkpoint_every", 1), keep=20)
    return fit(state, step, data, total_steps=steps, rng=jax.random.key(0), **kw)


def _losses(result) -> list[float]:
    return [r["loss"] for r in result.steps]


def _no_prefetch_thread_left():
    return not any(t.name == "jaxfm-prefetch" and t.is_alive() for t in threading.enumerate())


@pytest.fixture(scope="module")
def reference():
    result = _run(_data(), prefetch=0)
    return _losses(result), np.asarray(result.state.params["w"])


@pytest.mark.parametrize("prefetch", [1, 2])
def test_prefetch_gives_the_synchronous_loop_s_losses_exactly(reference, prefetch):
    result = _run(_data(), prefetch=prefetch)
    assert _losses(result) == reference[0]
    np.testing.assert_array_equal(np.asarray(result.state.params["w"]), reference[1])
    assert [r["step"] for r in result.steps] == list(range(1, STEPS + 1))
    assert all(r["step_seconds"] >= 0 for r in result.steps)
    assert _no_prefetch_thread_left()


@pytest.mark.parametrize("prefetch", [0, 1, 2])
def test_an_error_of_the_batch_source_at_step_k_is_raised_by_fit(prefetch, tmp_path):
    with pytest.raises(_Broken, match="broke at batch 4") as info:
        _run(_data(fail_at=4), tmp_path / "w", prefetch=prefetch)
    frames = [f.name for f in traceback.extract_tb(info.value.__traceback__)]
    assert "_explode" in frames  # the traceback still shows where it was raised
    assert [r["step"] for r in read_metrics(tmp_path / "w")] == [1, 2, 3, 4]
    assert _no_prefetch_thread_left()


@pytest.mark.parametrize("prefetch", [0, 2])
def test_a_nan_loss_is_caught_at_its_step_and_never_checkpointed(prefetch, tmp_path):
    with pytest.raises(FloatingPointError, match="loss became nan at step 3"):
        _run(_data(nan_at=3), tmp_path / "w", prefetch=prefetch, checkpoint_every=5)
    saved = sorted(int(p.name) for p in (tmp_path / "w" / "checkpoints").iterdir()
                   if p.name.isdigit())  # fmt: skip
    assert saved == []  # step 5 would hold the NaN step's parameters
    assert _no_prefetch_thread_left()


def test_a_preempted_prefetching_run_saves_the_consumed_batches_and_resumes_exactly(
    tmp_path, reference
):
    wd = tmp_path / "w"
    # SIGTERM while the thread draws batch 5: a few batches past the step the loop saves
    first = _run(_data(signal_at=5), wd, prefetch=2)
    assert first.preempted and first.signal == signal.SIGTERM
    done = len(first.steps)
    assert 1 <= done < STEPS
    assert _no_prefetch_thread_left()
    second = _run(_data(), wd, prefetch=2, resume=True)
    assert second.start_step == done
    assert [r["loss"] for r in read_metrics(wd) if "loss" in r] == reference[0]
    np.testing.assert_array_equal(np.asarray(second.state.params["w"]), reference[1])


def test_metrics_stay_on_the_device_until_a_record_needs_them(monkeypatch):
    fetched = []
    real = trainer._host

    def counting(tree):
        if isinstance(tree, dict) and "loss" in tree:  # a step's whole metrics
            fetched.append(sorted(tree))
        return real(tree)

    monkeypatch.setattr(trainer, "_host", counting)
    result = _run(_data(), log_every=4)
    assert [r["step"] for r in result.steps] == [4, 8]
    assert len(fetched) == 2  # the two logged steps; the others' losses only
    result = _run(_data(), log_every=0, step_record=lambda step, host, s: {"e": host["err_sum"]})
    assert len(result.steps) == STEPS and all("e" in r for r in result.steps)


def test_prefetch_must_not_be_negative():
    with pytest.raises(ValueError, match="prefetch"):
        _run(_data(), prefetch=-1)
