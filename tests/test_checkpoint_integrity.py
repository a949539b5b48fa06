"""Nothing is restored silently: damaged checkpoints are detected and skipped in one line, a failed
save keeps the previous step, and a NaN state is never written."""
import errno
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from orbax.checkpoint._src.handlers import json_checkpoint_handler

from dsrg_jax.sharding import make_mesh, replicate
from dsrg_jax.train.checkpoint import CheckpointError, Checkpoints
from dsrg_jax.train.logging import MetricsWriter
from dsrg_jax.train.loop import train_loop


def _incompressible(r: np.random.Generator, shape) -> np.ndarray:
    """Finite float32 of random bits: orbax's zstd stores them verbatim, so flipped bytes decode
    without error into changed values (as with the damaged checkpoint that was reported)."""
    bits = r.integers(0, 2**32, shape, dtype=np.uint32)
    exponent = r.integers(1, 255, shape, dtype=np.uint32)  # 0: subnormal, 255: inf/NaN
    return ((bits & 0x807FFFFF) | (exponent << 23)).view(np.float32)


def _state(seed: int, n: int = 256):
    """A replicated state: params, optimiser state, RNG key data and step."""
    r = np.random.default_rng(seed)
    return replicate({
        "params": {"w": _incompressible(r, (n, n)),
                   "b": r.standard_normal(64).astype(jnp.bfloat16)},
        "opt": {"momentum": r.standard_normal(n, np.float32)},
        "rng": np.array([0, seed], np.uint32),
        "step": np.int32(seed),
    }, make_mesh())


def _assert_same(a, b):
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)


def _saved(directory, steps=(1, 2)) -> Checkpoints:
    ck = Checkpoints(directory, keep=3)
    for s in steps:
        ck.save(s, _state(s), {"step": s})
    return ck


def _flip_bytes(directory, step: int, array: np.ndarray, n: int = 4096) -> None:
    """Inverts `n` bytes of `array` where the step's data files hold them verbatim."""
    raw = np.asarray(array).tobytes()
    piece = raw[len(raw) // 2:len(raw) // 2 + n]
    for path in (directory / str(step) / "state").rglob("*"):
        data = bytearray(path.read_bytes()) if path.is_file() else b""
        at = data.find(piece)
        if at >= 0:
            data[at:at + n] = bytes(b ^ 0xFF for b in piece)
            path.write_bytes(bytes(data))
            return
    raise AssertionError(f"the bytes of the array are not stored verbatim under {directory}")


def _orbax_errors(caplog) -> list:
    return [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_round_trip_restores_values_meta_and_placement(tmp_path):
    ck = _saved(tmp_path)
    like = _state(0)
    state, meta = ck.restore(like)
    assert meta == {"step": 2}
    _assert_same(state, _state(2))
    assert state["params"]["w"].sharding == like["params"]["w"].sharding
    assert (tmp_path / "2" / "integrity").is_dir()


def test_flipped_bytes_are_detected_and_the_previous_step_restored(tmp_path, capsys):
    _saved(tmp_path)
    _flip_bytes(tmp_path, 2, _state(2)["params"]["w"])
    # Orbax alone restores the damaged step without complaint, with changed weights.
    like = _state(0)
    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), like)
    raw = ocp.CheckpointManager(tmp_path).restore(2, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract)))["state"]
    assert not np.array_equal(np.asarray(raw["params"]["w"]), np.asarray(_state(2)["params"]["w"]))

    capsys.readouterr()
    state, meta = Checkpoints(tmp_path, keep=3).restore(like)
    assert meta == {"step": 1}
    _assert_same(state, _state(1))
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        f"checkpoint step 2 in {tmp_path} is damaged (checksum mismatch: ['params']['w']); "
        f"trying step 1",
        f"restored step 1, the newest intact checkpoint in {tmp_path}"]


def test_resumed_run_replaces_the_damaged_step(tmp_path, capsys):
    _saved(tmp_path)
    _flip_bytes(tmp_path, 2, _state(2)["params"]["w"])
    ck = Checkpoints(tmp_path, keep=3)
    ck.restore(_state(0))
    ck.save(2, _state(2), {"step": 2})  # the resumed run reaches step 2 again
    capsys.readouterr()
    state, meta = Checkpoints(tmp_path, keep=3).restore(_state(0))
    assert meta == {"step": 2}
    _assert_same(state, _state(2))
    assert capsys.readouterr().out == ""


def test_unreadable_latest_step_is_one_line_and_falls_back(tmp_path, capsys, caplog):
    _saved(tmp_path)
    (tmp_path / "2" / "state" / "_METADATA").write_text('{"tree_metadata": {')
    capsys.readouterr()
    state, meta = Checkpoints(tmp_path, keep=3).restore(_state(0))
    assert meta == {"step": 1}
    _assert_same(state, _state(1))
    out = capsys.readouterr()
    lines = out.out.splitlines()
    assert len(lines) == 2 and lines[0].startswith(f"checkpoint step 2 in {tmp_path} is damaged (")
    assert lines[0].endswith("); trying step 1")
    assert "Traceback" not in out.err and not _orbax_errors(caplog)


def test_changed_metadata_is_detected(tmp_path, capsys):
    """A data position or step changed on disk (still valid JSON) is not resumed from."""
    _saved(tmp_path)
    (tmp_path / "2" / "meta" / "metadata").write_text('{"step": 3}')
    capsys.readouterr()
    _, meta = Checkpoints(tmp_path, keep=3).restore(_state(0))
    assert meta == {"step": 1}
    assert capsys.readouterr().out.splitlines()[0] == (
        f"checkpoint step 2 in {tmp_path} is damaged (checksum mismatch: metadata); trying step 1")


def test_no_intact_step_raises_one_line_naming_the_folder(tmp_path):
    _saved(tmp_path)
    _flip_bytes(tmp_path, 1, _state(1)["params"]["w"])
    (tmp_path / "2" / "meta" / "metadata").write_text("{")
    with pytest.raises(CheckpointError) as e:
        Checkpoints(tmp_path, keep=3).restore(_state(0))
    assert str(e.value) == (
        f"no intact checkpoint in {tmp_path} (steps 2, 1 damaged); remove that folder to restart "
        f"this stage from step 0")


def test_a_state_of_other_shapes_is_refused_not_skipped(tmp_path):
    _saved(tmp_path)
    with pytest.raises(CheckpointError, match=r"step 2 .* holds another state \(\['opt'\]"
                                              r"\['momentum'\] saved float32\[256\], "
                                              r"expected float32\[64\] and 1 more\)"):
        Checkpoints(tmp_path, keep=3).restore(_state(0, n=64))


@pytest.mark.parametrize("code, cause", [(errno.ENOSPC, "disk full"),
                                         (errno.EACCES, "permission denied")])
def test_failed_save_keeps_the_previous_step(tmp_path, monkeypatch, caplog, code, cause):
    ck = _saved(tmp_path, steps=(1,))
    real_save = json_checkpoint_handler.JsonCheckpointHandler._save_fn

    async def failing_save(self, item, directory):
        """Writes half of the integrity record, then fails like a full or read-only disk."""
        if directory.name.startswith("integrity"):
            (directory / "metadata").write_text('{"format": 1, "arr')
            raise OSError(code, os.strerror(code))
        return await real_save(self, item, directory)

    monkeypatch.setattr(json_checkpoint_handler.JsonCheckpointHandler, "_save_fn", failing_save)
    with pytest.raises(CheckpointError) as e:
        ck.save(2, _state(2), {"step": 2})
    message = str(e.value)
    assert "\n" not in message
    assert message.startswith(f"could not save step 2 in {tmp_path}: {cause} (")
    assert "the previous checkpoint (step 1) is kept" in message
    assert not _orbax_errors(caplog)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["1"]  # the partial step is removed

    monkeypatch.undo()
    again = Checkpoints(tmp_path, keep=3)
    assert again.latest_step() == 1
    state, meta = again.restore(_state(0))
    assert meta == {"step": 1}
    _assert_same(state, _state(1))
    again.save(2, _state(2), {"step": 2})  # the disk is fixed: saving works again
    assert again.all_steps() == [1, 2]


def test_non_finite_state_is_not_saved(tmp_path):
    ck = _saved(tmp_path, steps=(1,))
    bad = _state(2)
    bad["opt"]["momentum"] = bad["opt"]["momentum"].at[3].set(jnp.inf)
    with pytest.raises(CheckpointError, match=r"not saving step 2 .* \['opt'\]\['momentum'\] "
                                              r"holds NaN/inf; the previous checkpoint \(step 1\)"):
        ck.save(2, bad, {"step": 2})
    assert ck.all_steps() == [1]


def test_checkpoint_without_checksums_is_checked_for_nan(tmp_path, capsys):
    """Steps written before checksums were kept: shapes and finiteness are still checked."""
    old = ocp.CheckpointManager(tmp_path, options=ocp.CheckpointManagerOptions(
        enable_async_checkpointing=False))
    nan = _state(2)
    nan["params"]["w"] = nan["params"]["w"].at[0, 0].set(jnp.nan)
    for step, state in ((1, _state(1)), (2, nan)):
        old.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                               meta=ocp.args.JsonSave({"step": step})))
    old.wait_until_finished()
    capsys.readouterr()
    state, meta = Checkpoints(tmp_path, keep=3).restore(_state(0))
    assert meta == {"step": 1}
    _assert_same(state, _state(1))
    assert capsys.readouterr().out.splitlines() == [
        f"checkpoint step 2 in {tmp_path} is damaged (NaN/inf in ['params']['w']); trying step 1",
        f"checkpoint step 1 in {tmp_path} has no checksums (saved by an older version): checked "
        f"shapes and finiteness only",
        f"restored step 1, the newest intact checkpoint in {tmp_path}"]


class _Counter:
    """A data pipeline whose batch i is full of i; its position resumes from `state`."""

    def __init__(self, state):
        self.i = 0 if state is None else state["i"]

    def __next__(self):
        self.i += 1
        return {"x": np.full((8, 2), self.i, np.float32)}

    def state(self):
        return {"i": self.i}

    def close(self):
        pass


def _train(workdir, max_steps):
    mesh = make_mesh()
    state = replicate({"w": _incompressible(np.random.default_rng(0), (256, 256)),
                       "seen": np.float32(0)}, mesh)  # `seen` sums the data: order matters
    step_fn = jax.jit(lambda s, b: ({"w": s["w"] * 0.5, "seen": s["seen"] * 2 + b["x"].mean()},
                                    {"metrics": {"loss": b["x"].mean()}}))
    ck = Checkpoints(workdir / "ckpt", keep=3)
    writer = MetricsWriter(workdir, tensorboard=False)
    try:
        state, _ = train_loop(stage="t", state=state, step_fn=step_fn, make_pipeline=_Counter,
                              mesh=mesh, max_steps=max_steps, checkpoints=ck, writer=writer,
                              checkpoint_every=2, log_every=1)
    finally:
        ck.close()
        writer.close()
    return jax.device_get(state)


def test_training_resumes_from_the_newest_intact_step(tmp_path, capsys):
    straight = _train(tmp_path / "a", 6)
    at_4 = _train(tmp_path / "b", 4)
    _flip_bytes(tmp_path / "b" / "ckpt", 4, at_4["w"])
    capsys.readouterr()
    resumed = _train(tmp_path / "b", 6)
    _assert_same(resumed, straight)
    out = capsys.readouterr().out
    assert "checkpoint step 4 in " in out and "is damaged (checksum mismatch: ['w'])" in out
    assert "resumed from checkpoint at step 2" in out
