"""RNGStateCheckpoint (recdistill.training): a resume restores every global RNG exactly."""

from __future__ import annotations

import io
import random

import numpy as np
import torch

from recdistill.training import RNGStateCheckpoint


def _draws() -> tuple:
    return (tuple(np.random.normal(size=5)), tuple(np.random.rand(3)), random.random(), random.gauss(0, 1),
            tuple(torch.rand(3).tolist()))


def _roundtrip(state: dict) -> dict:
    """Through a checkpoint file, loaded the way Lightning resumes (weights_only)."""
    buffer = io.BytesIO()
    torch.save({"callbacks": {"RNGStateCheckpoint": state}}, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)["callbacks"]["RNGStateCheckpoint"]


def test_resume_restores_numpy_normal_draws_including_the_gaussian_cache():
    np.random.seed(7)
    random.seed(7)
    torch.manual_seed(7)
    np.random.normal(size=3)  # odd count: the polar method's second Gaussian is now cached
    random.gauss(0, 1)  # Python's gauss keeps a cached value as well
    assert np.random.get_state()[3] == 1
    callback = RNGStateCheckpoint()
    saved = _roundtrip(callback.state_dict())
    expected = _draws()
    np.random.seed(123)  # another process / a fresh start
    random.seed(123)
    torch.manual_seed(123)
    callback.load_state_dict(saved)
    assert _draws() == expected


def test_numpy_state_is_kept_whole():
    np.random.seed(3)
    np.random.standard_normal()
    before = np.random.get_state()
    saved = _roundtrip(RNGStateCheckpoint().state_dict())
    np.random.seed(0)
    RNGStateCheckpoint().load_state_dict(saved)
    after = np.random.get_state()
    assert after[0] == before[0] and np.array_equal(after[1], before[1])
    assert after[2:] == before[2:]  # position, has_gauss, cached_gaussian


def test_cuda_states_of_every_device_are_saved_and_restored(monkeypatch):
    states = [torch.tensor([1, 2, 3], dtype=torch.uint8), torch.tensor([4, 5, 6], dtype=torch.uint8)]
    restored: dict[int, torch.Tensor] = {}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [s.clone() for s in states])
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, device=0: restored.__setitem__(device, s))
    saved = _roundtrip(RNGStateCheckpoint().state_dict())
    assert [s.tolist() for s in saved["torch_cuda"]] == [[1, 2, 3], [4, 5, 6]]
    RNGStateCheckpoint().load_state_dict(saved)
    assert {d: s.tolist() for d, s in restored.items()} == {0: [1, 2, 3], 1: [4, 5, 6]}


def test_no_cuda_state_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert "torch_cuda" not in RNGStateCheckpoint().state_dict()


def test_checkpoints_of_the_older_format_still_resume():
    np.random.seed(5)
    old = {"python": list(random.getstate()[1]), "python_version": random.getstate()[0],
           "python_gauss": random.getstate()[2], "numpy": np.random.get_state()[1].tolist(),
           "numpy_pos": int(np.random.get_state()[2]), "torch": torch.get_rng_state()}
    expected = np.random.rand(2).tolist()
    RNGStateCheckpoint().load_state_dict(old)
    assert np.random.rand(2).tolist() == expected


def test_student_and_teacher_training_share_one_callback():
    import recdistill.student.fit as student_fit
    import recdistill.teacher.fit as teacher_fit
    from recdistill.student.callbacks import RNGStateCheckpoint as compat

    assert student_fit.RNGStateCheckpoint is teacher_fit.RNGStateCheckpoint is RNGStateCheckpoint is compat
