"""The hybrid teacher's collaborative item table is read through the student contract, so every
sequential student works (BERT4Rec's table has an extra mask row) and a CTR student is refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from recdistill.student import build_student
from recdistill.student.base import item_input_table
from recdistill.student.io import save_student
from recdistill.teacher.collaborative import load_collaborative_embeddings

N = 15


@pytest.mark.parametrize("name, kwargs", [
    ("bert4rec", dict(hidden_size=8, num_layers=1, num_heads=2, max_len=6)),
    ("gru4rec", dict(hidden_size=8)),
    ("sasrec", dict(hidden_size=8, num_layers=1, num_heads=2, max_len=6)),
    ("caser", dict(hidden_size=8, window=3, num_horizontal=2, num_vertical=1)),
])
def test_every_sequential_student_gives_its_n_plus_1_item_rows(name: str, kwargs: dict, tmp_path: Path) -> None:
    torch.manual_seed(0)
    student = build_student(name, num_items=N, **kwargs)
    folder = save_student(student, tmp_path / name)
    table = load_collaborative_embeddings(folder, N)
    assert table.shape == (N + 1, 8)
    raw = item_input_table(student)
    assert raw.shape[0] == N + 1  # BERT4Rec: the mask row (N + 1) is not an item
    body = raw[1:]
    expected = (body - body.mean(0)) / body.std(0).clamp_min(1e-6)  # standardised per dimension over items
    assert torch.allclose(table[1:], expected, atol=1e-4)
    assert torch.count_nonzero(table[0]) == 0


def test_a_ctr_student_is_refused_with_the_fix(tmp_path: Path) -> None:
    folder = save_student(build_student("deepfm", field_dims=[3, 4], embed_dim=4), tmp_path / "deepfm")
    with pytest.raises(ValueError, match="use a sequential student"):
        load_collaborative_embeddings(folder, N)
