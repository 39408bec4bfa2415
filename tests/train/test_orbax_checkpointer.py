import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxfm.train.checkpoint import Checkpointer, CorruptCheckpointWarning, abstract_like


def _state(v):
    return {"params": {"w": jnp.full((3, 2), v, jnp.float32)}, "step": jnp.int32(v)}


def test_keep_n_and_restore_latest_roundtrip(tmp_path):
    ck = Checkpointer(tmp_path, keep=2)
    for s in (1, 2, 3):
        ck.save(s, _state(s), {"data": {"epoch": s}})
    ck.wait()
    assert ck.steps() == [2, 3]
    step, state, meta = ck.restore_latest(abstract_like(_state(0)))
    assert step == 3 and meta == {"data": {"epoch": 3}}
    np.testing.assert_array_equal(state["params"]["w"], 3.0)
    ck.close()


def test_corrupt_newest_checkpoint_is_skipped_with_a_warning(tmp_path):
    ck = Checkpointer(tmp_path, keep=3, async_save=False)
    ck.save(1, _state(1), {"k": 1})
    ck.save(2, _state(2), {"k": 2})
    ck.wait()
    # Truncate every data file of step 2 (a disk that filled up, a bad copy).
    damaged = 0
    for f in (tmp_path / "2" / "state").rglob("*"):
        if f.is_file() and f.stat().st_size > 0:
            f.write_bytes(f.read_bytes()[: f.stat().st_size // 3])
            damaged += 1
    assert damaged
    with pytest.warns(CorruptCheckpointWarning, match=f"step 2 in {tmp_path}"):
        step, state, meta = ck.restore_latest(abstract_like(_state(0)))
    assert step == 1 and meta == {"k": 1}
    assert (tmp_path / "corrupt" / "2").is_dir() and ck.steps() == [1]  # set aside, not deleted
    np.testing.assert_array_equal(state["params"]["w"], 1.0)


def test_no_checkpoint_gives_none(tmp_path):
    assert Checkpointer(tmp_path / "x").restore_latest(abstract_like(_state(0))) is None


def test_unfinished_temporary_step_directory_is_not_a_checkpoint(tmp_path):
    ck = Checkpointer(tmp_path, async_save=False)
    ck.save(5, _state(5), {})
    ck.wait()
    (tmp_path / "7.orbax-checkpoint-tmp-123").mkdir()
    assert ck.steps() == [5]
    assert jax.tree.leaves(ck.restore(5, abstract_like(_state(0)))[0])
