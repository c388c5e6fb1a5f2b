"""dip_uq.checkpoint: atomic files, and checkpoints that refuse another run's state."""

from __future__ import annotations

import pytest
import torch

from dip_uq.checkpoint import atomic_write, differences, load, save


def test_atomic_write_replaces_in_one_step_and_leaves_nothing_behind_on_failure(tmp_path):
    path = tmp_path / "sub" / "result.txt"
    with atomic_write(path) as tmp:
        assert tmp.parent == path.parent and tmp != path
        tmp.write_text("first")
    assert path.read_text() == "first"
    with pytest.raises(RuntimeError, match="crash"), atomic_write(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash")
    assert path.read_text() == "first"  # the old file, not half of the new one
    assert sorted(p.name for p in path.parent.iterdir()) == ["result.txt"]


def test_save_and_load_round_trip_tensors_and_numbers(tmp_path):
    path = tmp_path / "state.pt"
    fingerprint = {"seed": 3, "shape": [4, 5], "sigma": 0.25, "solver": {"iterations": 10}}
    save(path, "test 1", fingerprint, {"weights": torch.arange(6.0), "step": 7})
    state = load(path, "test 1", fingerprint)
    assert torch.equal(state["weights"], torch.arange(6.0)) and state["step"] == 7
    assert load(tmp_path / "missing.pt", "test 1", fingerprint) is None


def test_another_run_kind_or_a_broken_file_is_refused_in_one_line(tmp_path):
    path = tmp_path / "state.pt"
    save(path, "test 1", {"seed": 3, "sigma": 0.25}, {})
    with pytest.raises(ValueError, match=r"another run \(seed: 3 != 4\); delete it") as error:
        load(path, "test 1", {"seed": 4, "sigma": 0.25})
    assert "\n" not in str(error.value)
    with pytest.raises(ValueError, match="is not a 'test 2' file"):
        load(path, "test 2", {"seed": 3, "sigma": 0.25})
    path.write_bytes(path.read_bytes()[:20])  # truncated, as by a crash of another writer
    with pytest.raises(ValueError, match="cannot read the checkpoint"):
        load(path, "test 1", {"seed": 3})


def test_floats_match_to_the_given_tolerance_also_when_nested():
    saved = {"sigma": 1.0, "prior": {"a": 2.0, "b": [1.0, 3.0]}, "n": 5}
    close = {"sigma": 1.0 + 1e-9, "prior": {"a": 2.0, "b": [1.0, 3.0 + 1e-9]}, "n": 5}
    assert differences(saved, close) == ["sigma", "prior"]  # exact by default
    assert differences(saved, close, rtol=1e-6) == []
    assert differences(saved, {**close, "n": 6, "new": 1}, rtol=1e-6) == ["n", "new"]
    assert differences({"b": [1.0]}, {"b": [1.0, 2.0]}) == ["b"]
