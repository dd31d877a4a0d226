"""Loading a checkpoint never runs code, follows a path or imports a class that its JSON names, and
the weights it reloads are the ones it was trained on (crafted teacher.json / student.json files)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import recdistill.teacher.hllm as hllm
from recdistill.errors import CheckpointError
from recdistill.student import build_student
from recdistill.student.io import load_student, save_student
from recdistill.teacher.checkpoint import BaseModelCheckWarning
from recdistill.teacher.hllm import HLLMTeacher, load_teacher
from recdistill.teacher.testing import make_tiny_llama

NUM_ITEMS = 12


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return make_tiny_llama(tmp_path_factory.mktemp("tiny"), num_layers=2)


@pytest.fixture(scope="module")
def saved(tiny, tmp_path_factory) -> Path:
    torch.manual_seed(0)
    teacher = HLLMTeacher(num_items=NUM_ITEMS, item_embeddings=torch.randn(NUM_ITEMS, 16), base_model=str(tiny),
                          num_layers=1, item_bias=True, progress=False)
    return teacher.save_pretrained(tmp_path_factory.mktemp("ckpt") / "adapter")


@pytest.fixture
def ckpt(saved, tmp_path) -> Path:
    """A fresh copy of the saved teacher, free to be tampered with."""
    return Path(shutil.copytree(saved, tmp_path / "adapter"))


def _edit(folder: Path, change) -> None:
    meta = json.loads((folder / "teacher.json").read_text())
    change(meta)
    (folder / "teacher.json").write_text(json.dumps(meta))


def _spy_base_loader(monkeypatch) -> list[dict]:
    calls: list[dict] = []
    real = hllm.load_base_model

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(hllm, "load_base_model", spy)
    return calls


# --------------------------------------------------------------------------- trust_remote_code
def test_saved_checkpoint_does_not_store_trust_remote_code(saved):
    meta = json.loads((saved / "teacher.json").read_text())
    assert "trust_remote_code" not in meta["init_args"]


def test_crafted_trust_remote_code_in_teacher_json_is_ignored(ckpt, monkeypatch):
    _edit(ckpt, lambda m: m["init_args"].update(trust_remote_code=True))
    calls = _spy_base_loader(monkeypatch)
    load_teacher(ckpt)
    assert calls and all(c.get("trust_remote_code") is False for c in calls)
    calls.clear()
    HLLMTeacher.from_pretrained(ckpt)
    assert calls and all(c.get("trust_remote_code") is False for c in calls)


def test_only_the_caller_turns_trust_remote_code_on(ckpt, monkeypatch):
    calls = _spy_base_loader(monkeypatch)
    load_teacher(ckpt, trust_remote_code=True)
    assert calls[-1]["trust_remote_code"] is True


def test_cli_flag_reaches_the_loader(monkeypatch):
    import recdistill.teacher.cli as teacher_cli
    from recdistill.cli import build_parser

    args, _ = build_parser().parse_known_args(["teacher", "eval", "--config", "x.yaml", "--output-dir", "o",
                                               "--trust-remote-code"])
    assert args.trust_remote_code is True
    args, _ = build_parser().parse_known_args(["teacher", "eval", "--config", "x.yaml", "--output-dir", "o"])
    assert args.trust_remote_code is False
    assert "trust_remote_code" in teacher_cli.run_teacher_command.__code__.co_varnames


# --------------------------------------------------------------------------- class paths
@pytest.mark.parametrize("class_path", [
    "os.system",
    "builtins.eval",
    "recdistill.teacher.cli.run_teacher_command",  # inside recdistill.teacher, still not a teacher class
    "recdistill.teacher.hllm.load_teacher",
    "recdistill.student.SASRec",
])
def test_class_outside_the_teacher_registry_is_refused(ckpt, class_path):
    _edit(ckpt, lambda m: m.update({"class": class_path}))
    with pytest.raises(CheckpointError, match="refusing teacher class"):
        load_teacher(ckpt)


def test_collaborative_student_spec_must_be_registered(ckpt):
    _edit(ckpt, lambda m: m.update(collab_model={"name": "os.system", "init_args": {}}))
    with pytest.raises(CheckpointError, match="unknown student 'os.system'"):
        load_teacher(ckpt)


# --------------------------------------------------------------------------- file paths
def test_file_paths_in_teacher_json_are_not_followed(ckpt, tmp_path, monkeypatch):
    outside = tmp_path / "outside"
    outside.mkdir()
    _edit(ckpt, lambda m: m["init_args"].update(collaborative_embeddings=str(outside / "emb.pt"),
                                                collaborative_model=str(outside / "student"),
                                                embedding_cache_dir=str(outside / "cache")))
    opened: list[str] = []
    monkeypatch.setattr(hllm, "load_item_embedding_file", lambda p: opened.append(str(p)))
    monkeypatch.setattr(hllm, "load_collaborative_model", lambda s, n: opened.append(str(s)))
    teacher = load_teacher(ckpt)
    assert opened == []
    assert not hasattr(teacher, "item_collab_emb") and not hasattr(teacher, "collab_model")
    assert list(outside.iterdir()) == []  # nothing written there either


@pytest.mark.parametrize("gguf", ["../../etc/model.gguf", "/abs/model.gguf", "sub/model.gguf", ".."])
def test_gguf_file_must_be_a_bare_name(ckpt, gguf):
    _edit(ckpt, lambda m: m["init_args"].update(gguf_file=gguf))
    with pytest.raises(CheckpointError, match="gguf_file must be a bare file name"):
        load_teacher(ckpt)


def test_unknown_init_args_are_refused(ckpt):
    _edit(ckpt, lambda m: m["init_args"].update(__class__="os.system"))
    with pytest.raises(CheckpointError, match="not arguments of HLLMTeacher"):
        load_teacher(ckpt)


@pytest.mark.parametrize("change, match", [
    (lambda m: m.update(format_version=99), "format_version"),
    (lambda m: m.update(init_args=["num_items"]), "init_args"),
    (lambda m: m["init_args"].update(num_items="12; rm -rf /"), "num_items"),
    (lambda m: m.update(base_model="acme/model"), "base_model"),
])
def test_malformed_teacher_json_is_named(ckpt, change, match):
    _edit(ckpt, change)
    with pytest.raises(CheckpointError, match=match) as info:
        load_teacher(ckpt)
    assert "teacher.json" in str(info.value)


def test_corrupt_teacher_json_and_weights_are_named(ckpt):
    head = ckpt / "head.safetensors"
    data = bytearray(head.read_bytes())
    data[-1] ^= 0xFF  # a flipped bit in the last weight
    head.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="head.safetensors.*corrupt"):
        load_teacher(ckpt)
    (ckpt / "teacher.json").write_text('{"format_version": 1, "class": ')
    with pytest.raises(CheckpointError, match="teacher.json is corrupt"):
        load_teacher(ckpt)


# --------------------------------------------------------------------------- base model identity
def test_changed_local_base_weights_are_detected(tiny, saved, tmp_path):
    base = Path(shutil.copytree(tiny, tmp_path / "base"))
    torch.manual_seed(0)
    teacher = HLLMTeacher(num_items=NUM_ITEMS, item_embeddings=torch.randn(NUM_ITEMS, 16), base_model=str(base),
                          num_layers=1, progress=False)
    path = teacher.save_pretrained(tmp_path / "adapter")
    make_tiny_llama(base, num_layers=2, seed=1)  # other weights in the same folder
    with pytest.raises(CheckpointError, match="changed since the teacher"):
        load_teacher(path)


def test_unverifiable_base_is_reported(ckpt):
    _edit(ckpt, lambda m: m["base_model"].update(weights_sha256=None))
    with pytest.warns(BaseModelCheckWarning, match="cannot verify"):
        load_teacher(ckpt)
    with pytest.warns(BaseModelCheckWarning, match="not verified"):
        load_teacher(ckpt, check_base=False)


HUB_SCRIPT = textwrap.dedent("""
    import json, shutil, sys, warnings
    from pathlib import Path
    import torch
    from recdistill.errors import CheckpointError
    from recdistill.teacher.hllm import HLLMTeacher, load_teacher
    from recdistill.teacher.loading import load_base_model
    from recdistill.teacher.testing import make_tiny_llama

    root, first, second = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    repo = root / "hub" / "models--acme--tiny"

    def snapshot(commit, seed):
        folder = make_tiny_llama(repo / "snapshots" / commit, num_layers=2, seed=seed)
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / "main").write_text(commit)
        return folder

    snapshot(first, 0)
    _, _, ref = load_base_model("acme/tiny", load_tokenizer=False)
    assert ref.kind == "hub" and ref.revision == first and ref.weights_sha256, ref
    torch.manual_seed(0)
    teacher = HLLMTeacher(num_items=12, item_embeddings=torch.randn(12, 16), base_model="acme/tiny", num_layers=1,
                          progress=False)
    path = teacher.save_pretrained(root / "adapter")
    meta = json.loads((path / "teacher.json").read_text())
    assert meta["base_model"]["revision"] == first and meta["base_model"]["weights_sha256"] == ref.weights_sha256
    later = snapshot(second, 1)  # the hub moved on: main now points at other weights
    reloaded = load_teacher(path)
    assert reloaded.base_ref.revision == first, reloaded.base_ref.revision  # pinned to the trained commit
    x = torch.tensor([[0, 3, 5, 7]])
    with torch.no_grad():
        assert torch.equal(reloaded(x), teacher.eval()(x))
    # the recorded snapshot's weights were swapped: refused, naming the base model
    shutil.copy(later / "model.safetensors", repo / "snapshots" / first / "model.safetensors")
    try:
        load_teacher(path)
    except CheckpointError as exc:
        assert "changed since the teacher" in str(exc), exc
    else:
        raise AssertionError("swapped hub weights were not detected")
    print("OK")
""")


def test_hub_base_is_reloaded_at_the_recorded_commit_and_checked(tmp_path):
    env = dict(os.environ, HF_HUB_CACHE=str(tmp_path / "hub"), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               OMP_NUM_THREADS="1", HF_HUB_DISABLE_TELEMETRY="1")
    result = subprocess.run([sys.executable, "-c", HUB_SCRIPT, str(tmp_path), "a" * 40, "b" * 40],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0 and "OK" in result.stdout, result.stderr[-3000:]


# --------------------------------------------------------------------------- student.json
@pytest.fixture
def student_dir(tmp_path) -> Path:
    return save_student(build_student("sasrec", num_items=10, hidden_size=8, num_layers=1, num_heads=1, max_len=5),
                        tmp_path / "student")


def _edit_student(folder: Path, change) -> None:
    spec = json.loads((folder / "student.json").read_text())
    change(spec)
    (folder / "student.json").write_text(json.dumps(spec))


@pytest.mark.parametrize("change, match", [
    (lambda s: s.update(name="os.system"), "unknown student 'os.system'"),
    (lambda s: s.update(name="recdistill.student.sasrec.SASRec"), "unknown student"),
    (lambda s: s.update(class_path="os.system"), "unknown field"),
    (lambda s: s.update(init_args="num_items=10"), "init_args"),
    (lambda s: s["init_args"].update(weights_path="/etc/passwd"), "weights_path"),
    (lambda s: s["init_args"].update(num_items=11), "does not fit"),
])
def test_crafted_student_json_is_refused_naming_the_file(student_dir, change, match):
    _edit_student(student_dir, change)
    with pytest.raises(CheckpointError, match=match) as info:
        load_student(student_dir)
    assert "student.json" in str(info.value)


def test_corrupt_student_files_are_named(student_dir):
    weights = student_dir / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="model.safetensors does not match the sha256"):
        load_student(student_dir)
    (student_dir / "student.json").write_text('{"name": "sasrec", ')
    with pytest.raises(CheckpointError, match="student.json is corrupt"):
        load_student(student_dir)
