"""A flipped byte in a saved artefact is detected with a message naming the file (issue 11):
resume checkpoints (zip CRC-32), ``student.json`` (its own sha256), cache shards (manifest sha256)."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
import torch

from recdistill.atomic import CorruptFileError, verify_zip_file
from recdistill.errors import CheckpointError
from recdistill.student import build_student
from recdistill.student.io import load_student, save_student


def _data_offset(path: Path, member_suffix: str) -> int:
    """Byte offset of the first data byte of the zip member whose name ends with ``member_suffix``."""
    with zipfile.ZipFile(path) as archive:
        info = next(i for i in archive.infolist() if i.filename.endswith(member_suffix))
    with open(path, "rb") as handle:
        handle.seek(info.header_offset + 26)
        name_len, extra_len = (int.from_bytes(handle.read(2), "little") for _ in range(2))
    return info.header_offset + 30 + name_len + extra_len


def _flip(path: Path, position: int, mask: int = 0x10) -> None:
    data = bytearray(path.read_bytes())
    data[position] ^= mask
    path.write_bytes(bytes(data))


@pytest.fixture
def checkpoint(tmp_path) -> tuple[Path, torch.nn.Module]:
    model = torch.nn.Linear(4, 3)
    path = tmp_path / "checkpoints" / "last.ckpt"
    path.parent.mkdir()
    torch.save({"state_dict": model.state_dict(), "epoch": 2, "hyper_parameters": {}}, path)
    return path, model


def test_flipped_tensor_byte_in_a_checkpoint_is_detected(checkpoint):
    path, _ = checkpoint
    verify_zip_file(path)  # intact
    _flip(path, _data_offset(path, "data/0") + 5)
    # torch.load alone reads the changed weight without complaint: the reason for the check
    assert torch.load(path, map_location="cpu", weights_only=True)["epoch"] == 2
    with pytest.raises(CorruptFileError, match="last.ckpt is corrupt: member .* CRC-32"):
        verify_zip_file(path)


def test_truncated_or_foreign_checkpoint_is_named(checkpoint, tmp_path):
    path, _ = checkpoint
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(CorruptFileError, match="last.ckpt is corrupt"):
        verify_zip_file(path)
    text = tmp_path / "notes.ckpt"
    text.write_text("not a checkpoint")
    with pytest.raises(CorruptFileError, match="notes.ckpt is corrupt"):
        verify_zip_file(text)


def test_resume_refuses_a_checkpoint_with_a_flipped_tensor_byte(checkpoint):
    from recdistill.training import check_resume_checkpoint

    path, model = checkpoint
    _flip(path, _data_offset(path, "data/0") + 5)
    with pytest.raises(CheckpointError, match="last.ckpt"):
        check_resume_checkpoint(path, model)


@pytest.fixture
def student_dir(tmp_path) -> Path:
    model = build_student("sasrec", num_items=10, hidden_size=8, num_layers=1, num_heads=1, max_len=5, dropout=0.2)
    return save_student(model, tmp_path / "student")


def test_student_json_value_flip_that_still_loads_is_detected(student_dir):
    spec_path = student_dir / "student.json"
    text = spec_path.read_text()
    position = text.index('"dropout": 0.2') + len('"dropout": 0.')
    _flip(spec_path, position, mask=0x01)  # "0.2" -> "0.3": builds, and the weights still fit
    assert json.loads(spec_path.read_text())["init_args"]["dropout"] == 0.3
    with pytest.raises(CheckpointError, match="student.json does not match its recorded spec_sha256"):
        load_student(student_dir)


def test_student_json_layout_and_legacy_files_still_load(student_dir):
    spec_path = student_dir / "student.json"
    spec = json.loads(spec_path.read_text())
    spec_path.write_text(json.dumps(spec, indent=4))  # same content, other whitespace
    assert load_student(student_dir).init_args["dropout"] == 0.2
    del spec["spec_sha256"]  # written before the field existed
    spec_path.write_text(json.dumps(spec))
    assert load_student(student_dir).init_args["dropout"] == 0.2


def test_flipped_weights_byte_is_detected(student_dir):
    weights = student_dir / "model.safetensors"
    _flip(weights, weights.stat().st_size - 3)
    with pytest.raises(CheckpointError, match="model.safetensors does not match the sha256"):
        load_student(student_dir)


def test_flipped_shard_byte_is_detected_naming_the_shard(tmp_path):
    from recdistill.data import build_sequential_split, synthetic_interactions
    from recdistill.teacher.cache_format import CacheMismatchError
    from recdistill.teacher.cache_reader import TeacherSignals
    from recdistill.teacher.cache_writer import write_cache

    split = build_sequential_split(synthetic_interactions(12, 8, mean_length=6, seed=1))
    ids = torch.as_tensor(split.example_ids("test"))
    rows = {"test": {"example_id": ids, "topk_items": torch.ones(len(ids), 2, dtype=torch.int32)}}
    cache = write_cache(tmp_path / "signals", rows, split=split, shard_size=5, teacher={"name": "oracle"},
                        item_tables={"item_embeddings": torch.zeros(split.num_items + 1, 4)})
    TeacherSignals(cache, verify=True)
    shard = cache / "test-00001.safetensors"
    _flip(shard, shard.stat().st_size - 2)
    with pytest.raises(CacheMismatchError, match="test-00001.safetensors"):
        TeacherSignals(cache, verify=True)
