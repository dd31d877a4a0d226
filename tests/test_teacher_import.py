"""DLLM2Rec-style teacher files -> signals cache, with an explicit item-id mapping."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from recdistill.teacher.cache_reader import TeacherSignals
from recdistill.teacher.dllm2rec_import import IdMappingError, import_dllm2rec
from recdistill.teacher.signals import CacheMismatchError
from recdistill.teacher.testing import planted_split


@pytest.fixture(scope="module")
def split():
    return planted_split(num_users=20, num_items=15, mean_length=8, seed=3)


def _their_files(tmp_path, split, k=5, seed=0):
    """Files in DLLM2Rec's layout, with their own (0-based, shuffled) item ids."""
    rng = np.random.default_rng(seed)
    n = split.num_items
    ours_of_theirs = rng.permutation(n) + 1  # their id j <-> our item ours_of_theirs[j]
    theirs_of_ours = np.empty(n + 1, dtype=np.int64)
    theirs_of_ours[ours_of_theirs] = np.arange(n)
    example_ids = split.example_ids("train")
    rng.shuffle(example_ids)  # their row order is not ours
    ours_top = np.stack([rng.choice(np.arange(1, n + 1), k, replace=False) for _ in example_ids])
    dist = np.sort(rng.random((len(example_ids), k)), axis=1).astype(np.float32)
    np.savetxt(tmp_path / "myrank_train.txt", theirs_of_ours[ours_top], fmt="%d")
    np.savetxt(tmp_path / "confidence_train.txt", dist, fmt="%.6f")
    our_emb = torch.randn(n + 1, 6)
    torch.save(our_emb[torch.from_numpy(ours_of_theirs)].clone(), tmp_path / "all_embeddings.pt")
    mapping = {int(j): int(ours_of_theirs[j]) for j in range(n)}
    return example_ids, ours_top, dist, our_emb, mapping


def test_import_roundtrip_with_mapping(tmp_path, split):
    eids, ours_top, dist, our_emb, mapping = _their_files(tmp_path, split)
    (tmp_path / "map.json").write_text(json.dumps({str(k): v for k, v in mapping.items()}))
    out = import_dllm2rec(tmp_path / "signals", split, which="train", topk_file=tmp_path / "myrank_train.txt",
                          scores_file=tmp_path / "confidence_train.txt", example_ids=eids,
                          id_mapping=tmp_path / "map.json", item_embeddings_file=tmp_path / "all_embeddings.pt",
                          shard_size=32)
    reader = TeacherSignals(out, split=split, verify=True)
    assert reader.k == 5
    got = reader.get(eids, keys=("topk_items", "topk_scores", "target"))
    assert np.array_equal(got["topk_items"].numpy(), ours_top)
    assert np.allclose(got["topk_scores"].numpy(), -dist, atol=1e-6)  # distances negated: higher = better
    users, pos = np.divmod(eids, 1 << 20)
    assert np.array_equal(got["target"].numpy(), [split.sequences[u][p] for u, p in zip(users, pos)])
    table = reader.item_embeddings()
    assert torch.allclose(table[1:], our_emb[1:]) and torch.equal(table[0], torch.zeros(6))
    assert np.array_equal(reader.example_ids("train"), np.sort(eids))
    man = json.loads((out / "manifest.json").read_text())
    assert man["score_transform"] == "negated distance" and man["complete"] is True
    with pytest.raises(KeyError, match="not emitted"):
        reader.get(eids[:2], keys=("hidden",))


def test_import_mismatches_are_errors(tmp_path, split):
    eids, _, _, _, mapping = _their_files(tmp_path, split)
    args = dict(which="train", topk_file=tmp_path / "myrank_train.txt", example_ids=eids)
    short = dict(list(mapping.items())[:-1])
    n = split.num_items
    with pytest.raises(IdMappingError, match=f"{n - 1} items but the dataset has {n}"):
        import_dllm2rec(tmp_path / "a", split, id_mapping=short, **args)
    shifted = {k + 100: v for k, v in mapping.items()}
    with pytest.raises(IdMappingError, match="missing from the id mapping"):
        import_dllm2rec(tmp_path / "b", split, id_mapping=shifted, **args)
    dup = dict(mapping)
    dup[0] = dup[1]
    with pytest.raises(IdMappingError, match="one-to-one"):
        import_dllm2rec(tmp_path / "c", split, id_mapping=dup, **args)
    torch.save(torch.randn(split.num_items + 1, 6), tmp_path / "big.pt")
    with pytest.raises(IdMappingError, match="rows"):
        import_dllm2rec(tmp_path / "d", split, id_mapping=mapping, item_embeddings_file=tmp_path / "big.pt", **args)
    with pytest.raises(ValueError, match="rows but"):
        import_dllm2rec(tmp_path / "e", split, id_mapping=mapping, **dict(args, example_ids=eids[:-1]))
    out = import_dllm2rec(tmp_path / "f", split, id_mapping=mapping, **args)
    other = planted_split(num_users=20, num_items=15, mean_length=8, seed=4)
    with pytest.raises(CacheMismatchError, match="dataset"):
        TeacherSignals(out, split=other)
    with pytest.raises(CacheMismatchError, match="fingerprint"):
        TeacherSignals(out, dataset_fingerprint=other.fingerprint)


def test_a_bad_item_embedding_file_leaves_the_cache_untouched(tmp_path, split):
    """The embedding file is checked before anything is deleted or written: an overwrite with a wrong
    file must not destroy the cache it was meant to replace, and a first import leaves no folder."""
    eids, _, _, _, mapping = _their_files(tmp_path, split)
    args = dict(which="train", topk_file=tmp_path / "myrank_train.txt", example_ids=eids, id_mapping=mapping,
                scores_file=tmp_path / "confidence_train.txt")
    torch.save(torch.randn(split.num_items + 1, 6), tmp_path / "big.pt")  # one row too many
    with pytest.raises(IdMappingError, match="rows"):
        import_dllm2rec(tmp_path / "new", split, item_embeddings_file=tmp_path / "big.pt", **args)
    assert not (tmp_path / "new").exists()
    out = import_dllm2rec(tmp_path / "signals", split, item_embeddings_file=tmp_path / "all_embeddings.pt", **args)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(IdMappingError, match="rows"):
        import_dllm2rec(out, split, item_embeddings_file=tmp_path / "big.pt", overwrite=True, **args)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert TeacherSignals(out, split=split, verify=True).k == 5


def test_splits_with_opposite_score_conventions_are_not_mixed(tmp_path, split):
    """Distances are negated, scores kept: a split imported under the other convention than the
    cache's would store scores of the opposite sign next to them, so it is a mismatch."""
    eids, _, _, _, mapping = _their_files(tmp_path, split)
    out = import_dllm2rec(tmp_path / "signals", split, which="train", topk_file=tmp_path / "myrank_train.txt",
                          scores_file=tmp_path / "confidence_train.txt", example_ids=eids, id_mapping=mapping)
    valid = split.example_ids("valid")
    rng = np.random.default_rng(1)
    np.savetxt(tmp_path / "myrank_valid.txt", rng.integers(0, split.num_items, (len(valid), 5)), fmt="%d")
    np.savetxt(tmp_path / "confidence_valid.txt", rng.random((len(valid), 5)), fmt="%.6f")
    valid_args = dict(which="valid", topk_file=tmp_path / "myrank_valid.txt", example_ids=valid, id_mapping=mapping,
                      scores_file=tmp_path / "confidence_valid.txt")
    with pytest.raises(CacheMismatchError, match="score_transform"):
        import_dllm2rec(out, split, scores_are_distances=False, **valid_args)
    assert TeacherSignals(out, split=split).splits == ["train"]
    import_dllm2rec(out, split, **valid_args)  # the cache's own convention
    reader = TeacherSignals(out, split=split)
    assert reader.splits == ["train", "valid"]
    assert json.loads((out / "manifest.json").read_text())["score_transform"] == "negated distance"
