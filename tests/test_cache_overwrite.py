"""Safe overwrite: only the files a cache owns are removed; a folder holding anything else is refused
(emission and the DLLM2Rec importer, which also keeps the splits imported earlier)."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

from recdistill.data import SequentialDataModule
from recdistill.teacher.cache_format import CacheMismatchError, owned_files
from recdistill.teacher.cache_reader import TeacherSignals
from recdistill.teacher.dllm2rec_import import import_dllm2rec
from recdistill.teacher.emit import emit_signals
from recdistill.teacher.hllm import HLLMTeacher
from recdistill.teacher.testing import make_tiny_llama, planted_split

warnings.filterwarnings("ignore", ".*does not have many workers.*")
QUIET = {"enable_progress_bar": False}


@pytest.fixture(scope="module")
def split():
    return planted_split(num_users=20, num_items=15, mean_length=8, seed=7)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory, split):
    tiny = make_tiny_llama(tmp_path_factory.mktemp("tiny"), texts=split.item_text, num_layers=2)
    torch.manual_seed(0)
    return HLLMTeacher(num_items=split.num_items, item_text=split.item_text, base_model=str(tiny), num_layers=2,
                       embedding_cache_dir=str(tmp_path_factory.mktemp("emb")), progress=False).eval()


@pytest.fixture(scope="module")
def dm(split):
    return SequentialDataModule.from_split(split, max_len=6)


def _emit(teacher, dm, out, **kw):
    args = dict(k=3, splits=["valid", "test"], shard_size=7, trainer_kwargs=QUIET)
    args.update(kw)
    return emit_signals(teacher, dm, out, **args)


def test_overwrite_removes_only_owned_files(tmp_path, teacher, dm):
    out = _emit(teacher, dm, tmp_path / "signals")
    n_before = len(list(out.glob("*-*.safetensors")))
    (out / "progress-rank3.json").write_text(json.dumps({"shards": {}}))  # leftovers of a crashed run
    (out / ".valid-00000.safetensors.abc123.tmp").write_bytes(b"partial")
    out = _emit(teacher, dm, out, shard_size=100, k=2, overwrite=True)  # fewer shards than before
    names = sorted(p.name for p in out.iterdir())
    assert names == ["item_embeddings.safetensors", "manifest.json", "test-00000.safetensors",
                     "valid-00000.safetensors"], names
    assert n_before > 2 and TeacherSignals(out).k == 2


@pytest.mark.parametrize("foreign", ["notes.txt", "adapter/"])
def test_overwrite_refuses_a_folder_with_foreign_files(tmp_path, teacher, dm, foreign):
    out = _emit(teacher, dm, tmp_path / "signals")
    if foreign.endswith("/"):
        (out / foreign).mkdir()
        (out / foreign / "teacher.json").write_text("{}")
    else:
        (out / foreign).write_text("mine")
    before = sorted(p.name for p in out.iterdir())
    with pytest.raises(CacheMismatchError, match=rf"refusing to overwrite {out}.*{foreign}") as info:
        _emit(teacher, dm, out, k=2, overwrite=True)
    assert "\n" not in str(info.value)
    assert sorted(p.name for p in out.iterdir()) == before  # nothing was deleted
    assert TeacherSignals(out).k == 3


def test_a_non_cache_folder_is_refused_even_with_overwrite(tmp_path, teacher, dm):
    run = tmp_path / "run"
    (run / "adapter").mkdir(parents=True)
    (run / "fit.json").write_text("{}")
    for overwrite in (False, True):
        with pytest.raises(CacheMismatchError, match="adapter/, fit.json"):
            _emit(teacher, dm, run, overwrite=overwrite)
    assert (run / "fit.json").is_file() and (run / "adapter").is_dir()


def test_an_old_format_cache_is_refused_then_overwritten(tmp_path, teacher, dm):
    out = _emit(teacher, dm, tmp_path / "signals")
    man = json.loads((out / "manifest.json").read_text())
    man["format_version"] = 1
    (out / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(CacheMismatchError, match="format_version.*--emit.overwrite"):
        _emit(teacher, dm, out)
    _emit(teacher, dm, out, overwrite=True)
    assert json.loads((out / "manifest.json").read_text())["format_version"] == 2


def _top(tmp_path, split, which, k, seed=0):
    rng = np.random.default_rng(seed)
    eids = split.example_ids(which)
    top = np.stack([rng.choice(np.arange(split.num_items), k, replace=False) for _ in eids])
    path = tmp_path / f"top_{which}_{k}.txt"
    np.savetxt(path, top, fmt="%d")  # their ids 0..N-1
    return dict(which=which, topk_file=path, example_ids=eids, id_mapping=list(range(1, split.num_items + 1)))


def test_import_overwrite_keeps_earlier_splits_and_refuses_foreign_files(tmp_path, split):
    out = tmp_path / "signals"
    import_dllm2rec(out, split, **_top(tmp_path, split, "train", 4), shard_size=16)
    import_dllm2rec(out, split, **_top(tmp_path, split, "valid", 4), shard_size=16)
    valid_bytes = (out / "valid-00000.safetensors").read_bytes()
    # importing train again (same settings, new content) replaces only train's shards
    again = _top(tmp_path, split, "train", 4, seed=1)
    import_dllm2rec(out, split, **again, shard_size=16)
    reader = TeacherSignals(out, split=split)
    assert reader.splits == ["train", "valid"] and (out / "valid-00000.safetensors").read_bytes() == valid_bytes
    assert len(list(out.glob("train-*.safetensors"))) > 1
    want = np.loadtxt(again["topk_file"], dtype=np.int64) + 1
    assert np.array_equal(reader.get(again["example_ids"], ("topk_items",))["topk_items"].numpy(), want)
    # other settings: overwrite would drop the valid split imported earlier -> refused, nothing deleted
    with pytest.raises(CacheMismatchError, match=r"holds split\(s\) \['valid'\]"):
        import_dllm2rec(out, split, **_top(tmp_path, split, "train", 3), shard_size=16, overwrite=True)
    assert TeacherSignals(out, split=split).splits == ["train", "valid"]
    # a single-split cache with other settings is rebuilt by overwrite ...
    single = tmp_path / "single"
    import_dllm2rec(single, split, **_top(tmp_path, split, "test", 4), shard_size=4)
    import_dllm2rec(single, split, **_top(tmp_path, split, "test", 3), overwrite=True)
    assert TeacherSignals(single).k == 3 and sorted(p.name for p in single.iterdir()) == [
        "manifest.json", "test-00000.safetensors"]
    # ... unless the folder holds files that are not the cache's
    (single / "README.md").write_text("mine")
    with pytest.raises(CacheMismatchError, match=rf"refusing to overwrite {single}.*README.md"):
        import_dllm2rec(single, split, **_top(tmp_path, split, "test", 2), overwrite=True)
    assert (single / "README.md").is_file() and TeacherSignals(single).k == 3
    assert owned_files(single, json.loads((single / "manifest.json").read_text())) == {
        "manifest.json", "test-00000.safetensors"}
