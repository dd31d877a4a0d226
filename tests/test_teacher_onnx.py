"""The text-prompt teacher's LLM exported by optimum (LoRA merged) and run on ONNX Runtime inside the
teacher: the same logits as the PyTorch teacher, the teacher itself untouched; the hybrid teacher is
refused with the reason."""

from __future__ import annotations

import pytest
import torch

from recdistill.export.teacher_onnx import export_teacher_llm, onnx_teacher
from recdistill.teacher.testing import make_tiny_llama, planted_split
from recdistill.teacher.text_prompt import TextPromptTeacher


def test_text_prompt_teacher_on_onnx_runtime_matches_pytorch(tmp_path):
    split = planted_split(num_users=30, num_items=20, mean_length=10, seed=0)
    words = "a user watched these movies in order the next movie will watch is"
    tiny = make_tiny_llama(tmp_path / "tiny", texts=split.item_text + [words], num_layers=2)
    torch.manual_seed(0)
    teacher = TextPromptTeacher(num_items=split.num_items, item_text=split.item_text, base_model=str(tiny),
                                num_layers=2, dropout=0.0, max_history_items=6, title_max_tokens=4,
                                embedding_cache_dir=str(tmp_path / "emb"), progress=False).eval()
    with torch.no_grad():  # a trained-looking adapter: merging must carry it into the exported weights
        for name, p in teacher.backbone.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    ids = torch.tensor([[0, 0, 3, 5, 7, 2], [1, 4, 9, 11, 6, 8]])
    with torch.no_grad():
        want = teacher(ids)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    path = export_teacher_llm(teacher, tmp_path / "onnx")
    twin = onnx_teacher(teacher, path, threads=1)
    with torch.no_grad():
        got = twin(ids)
        again = teacher(ids)
    finite = torch.isfinite(want)
    assert torch.equal(finite, torch.isfinite(got))
    torch.testing.assert_close(got[finite], want[finite], atol=1e-3, rtol=1e-3)
    assert torch.equal(got.topk(5, dim=-1).indices, want.topk(5, dim=-1).indices)
    torch.testing.assert_close(again, want)  # the teacher keeps its own (unmerged) LLM
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    # the adapter matters, so an export without it merged would fail the comparison above
    with torch.no_grad():
        for name, p in teacher.backbone.named_parameters():
            if "lora_B" in name:
                p.zero_()
        assert not torch.allclose(teacher(ids)[finite], want[finite], atol=1e-3, rtol=1e-3)


def test_the_hybrid_teacher_is_refused_with_the_reason(tmp_path):
    class Hybrid(torch.nn.Module):
        _uses_item_inputs = True

    with pytest.raises(TypeError, match="inputs_embeds"):
        export_teacher_llm(Hybrid(), tmp_path)
