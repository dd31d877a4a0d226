"""Teacher model: loading, item-text embeddings, HLLM fit on planted data, save/load, evaluation."""

from __future__ import annotations

import json
import math
import warnings

import lightning as L
import pytest
import torch

from recdistill.data import SequentialDataModule
from recdistill.teacher.hllm import HLLMTeacher, load_teacher
from recdistill.teacher.item_encoder import encode_item_texts
from recdistill.teacher.loading import load_base_model
from recdistill.teacher.testing import make_tiny_llama, planted_split

warnings.filterwarnings("ignore", ".*does not have many workers.*")


@pytest.fixture(scope="module")
def split():
    return planted_split(num_users=80, num_items=30, mean_length=16, seed=0)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, split):
    return make_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), texts=split.item_text, num_layers=3)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("emb-cache")


def _trainer(epochs: int) -> L.Trainer:
    return L.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)


def _teacher(split, tiny, cache_dir, **kw) -> HLLMTeacher:
    args = dict(num_items=split.num_items, item_text=split.item_text, base_model=str(tiny), num_layers=2,
                lr=5e-3, dropout=0.0, embedding_cache_dir=str(cache_dir), progress=False)
    args.update(kw)
    return HLLMTeacher(**args)


def test_load_local_folder_and_truncate(tiny):
    model, tok, ref = load_base_model(str(tiny), num_layers=2)
    assert ref.kind == "folder" and ref.model_type == "llama"
    assert ref.num_hidden_layers == 3 and ref.hidden_size == 32  # the full model, recorded
    assert len(model.model.layers) == 2 and model.config.num_hidden_layers == 2
    assert ref.weights_sha256 and len(ref.weights_sha256) == 64
    assert tok is not None and tok.encode("item 1", add_special_tokens=False)
    out = model.model(inputs_embeds=torch.randn(2, 5, 32), output_hidden_states=True)
    assert len(out.hidden_states) == 3 and torch.isfinite(out.last_hidden_state).all()
    with pytest.raises(ValueError, match="num_layers"):
        load_base_model(str(tiny), num_layers=7)
    with pytest.raises(FileNotFoundError):
        load_base_model(str(tiny / "missing.gguf"))


def test_item_embeddings_cached(tiny, split, tmp_path):
    model, tok, ref = load_base_model(str(tiny))
    emb = encode_item_texts(model, tok, split.item_text, ref=ref, cache_dir=tmp_path, progress=False, batch_size=7)
    assert emb.shape == (split.num_items, 32)
    assert torch.allclose(emb.mean(0), torch.zeros(32), atol=1e-4)  # standardised
    files = list(tmp_path.glob("*.safetensors"))
    assert len(files) == 1
    again = encode_item_texts(model, tok, split.item_text, ref=ref, cache_dir=tmp_path, progress=False)
    assert torch.equal(emb, again)
    # batch composition does not change the pooled embeddings (right padding, causal model)
    single = encode_item_texts(model, tok, split.item_text, ref=ref, use_cache=False, progress=False, batch_size=1)
    assert torch.allclose(emb, single, atol=1e-4)
    other = encode_item_texts(model, tok, split.item_text[:-1] + ["something else"], ref=ref, cache_dir=tmp_path,
                              progress=False)
    assert len(list(tmp_path.glob("*.safetensors"))) == 2 and not torch.equal(emb, other)
    # same base model and texts, another tokenizer: its own entry, never the first one's vectors
    class Shifted:
        def encode(self, text, add_special_tokens=False):
            return [(i + 1) % 64 for i in tok.encode(text, add_special_tokens=False)]

    shifted = encode_item_texts(model, Shifted(), split.item_text, ref=ref, cache_dir=tmp_path, progress=False)
    assert len(list(tmp_path.glob("*.safetensors"))) == 3 and not torch.allclose(emb, shifted, atol=1e-3)


def test_padding_invariance(split, tiny, cache_dir):
    """A sequence's logits do not depend on how much left padding it gets."""
    teacher = _teacher(split, tiny, cache_dir).eval()
    seq = torch.tensor([[3, 7, 9, 4]])
    padded = torch.tensor([[0, 0, 0, 3, 7, 9, 4]])
    with torch.no_grad():
        a, b = teacher(seq), teacher(padded)
    assert torch.allclose(a, b, atol=1e-5)
    assert a[0, 0] == -math.inf and torch.isfinite(a[0, 1:]).all()


def test_fit_reduces_loss_beats_random_and_roundtrips(split, tiny, cache_dir, tmp_path):
    from recdistill.teacher.evaluate import evaluate_teacher
    from recdistill.teacher.fit import fit_teacher

    torch.manual_seed(0)
    dm = SequentialDataModule.from_split(split, max_len=12, batch_size=16, eval_batch_size=64)
    teacher = _teacher(split, tiny, cache_dir, item_table="fusion", weight_decay=0.01)
    batch = next(iter(dm.dataloader("train")))
    teacher.eval()
    with torch.no_grad():
        loss0 = teacher.loss(batch).item()
    before = evaluate_teacher(teacher, dm, latency=False)["valid"]["ndcg@10"]

    path = fit_teacher(teacher, dm, _trainer(10), tmp_path / "teacher")
    with torch.no_grad():
        loss1 = teacher.loss(batch).item()
    assert loss1 < loss0 - 0.5, (loss0, loss1)
    fit = json.loads((tmp_path / "teacher" / "fit.json").read_text())
    assert fit["best_epoch"] is not None and len(fit["history"]) == 10

    metrics = evaluate_teacher(teacher, dm, tmp_path / "eval", latency_users=20)
    # random full ranking over 30 items (history masked) gives NDCG@10 well below 0.3
    assert metrics["valid"]["ndcg@10"] > 0.5 and metrics["test"]["ndcg@10"] > 0.5
    assert metrics["valid"]["ndcg@10"] > before + 0.2
    assert metrics["valid"]["ndcg@10"] == pytest.approx(fit["best_score"], abs=1e-6)
    written = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert set(written) >= {"valid", "test", "num_parameters", "trainable_parameters", "latency", "long_tail"}
    assert set(written["latency"]) >= {"p50_ms", "p99_ms", "sequences_per_second", "threads"}
    assert 0 < written["trainable_parameters"] < written["num_parameters"]
    assert written["untuned_llm"]["test"]["ndcg@10"] < written["test"]["ndcg@10"]  # fusion keeps the text table

    # checkpoint = peft adapter (save_pretrained format) + head + teacher.json
    assert {p.name for p in path.iterdir()} >= {"adapter_config.json", "adapter_model.safetensors",
                                                 "head.safetensors", "teacher.json"}
    meta = json.loads((path / "teacher.json").read_text())
    assert meta["dataset_fingerprint"] == split.fingerprint
    assert meta["base_model"]["weights_sha256"] == teacher.base_ref.weights_sha256
    reloaded = load_teacher(path)
    x = next(iter(dm.dataloader("test")))["input_ids"]
    with torch.no_grad():
        assert torch.equal(teacher(x), reloaded(x))
    assert reloaded.trained_state_hash() == teacher.trained_state_hash()


def test_adapter_is_saved_in_peft_format(split, tiny, cache_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    teacher = _teacher(split, tiny, cache_dir)
    with torch.no_grad():  # make the adapter non-trivial
        for name, p in teacher.backbone.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    path = teacher.save_pretrained(tmp_path / "ckpt")
    base = AutoModelForCausalLM.from_pretrained(str(tiny)).model
    base.layers = base.layers[:2]
    base.config.num_hidden_layers = 2
    peft_model = PeftModel.from_pretrained(base, str(path)).eval()
    x = torch.randn(1, 4, 32)
    teacher.eval()
    with torch.no_grad():
        ours = teacher.backbone(inputs_embeds=x).last_hidden_state
        theirs = peft_model(inputs_embeds=x).last_hidden_state
    assert torch.allclose(ours, theirs, atol=1e-6)


def test_item_table_modes_and_frozen_base(split, tiny, cache_dir):
    for mode in ("trainable", "fusion", "frozen"):
        teacher = _teacher(split, tiny, cache_dir, item_table=mode)
        trainable = {n for n, p in teacher.named_parameters() if p.requires_grad}
        assert all("lora_" in n for n in trainable if n.startswith("backbone."))
        assert any("lora_A" in n for n in trainable)
        assert ("item_emb.weight" in trainable) == (mode == "trainable")
        assert ("item_residual.weight" in trainable) == (mode == "fusion")
    with pytest.raises(ValueError, match="item_table"):
        _teacher(split, tiny, cache_dir, item_table="nope")
    with pytest.raises(ValueError, match="num_items"):
        _teacher(split, tiny, cache_dir, num_items=split.num_items + 1)


def test_collaborative_embeddings_and_item_bias_roundtrip(split, tiny, cache_dir, tmp_path):
    from recdistill.student import SASRec
    from recdistill.student.io import save_student

    torch.manual_seed(0)
    student = SASRec(num_items=split.num_items, hidden_size=8, num_layers=1, max_len=12)
    save_student(student, tmp_path / "sasrec")
    teacher = _teacher(split, tiny, cache_dir, item_table="fusion", item_bias=True,
                       collaborative_embeddings=str(tmp_path / "sasrec"))
    table = student.item_embedding.weight.detach()[1:]
    expected = (table - table.mean(0)) / table.std(0)  # standardised per dimension, padding row 0
    assert torch.allclose(teacher.item_collab_emb[1:], expected, atol=1e-5)
    assert not teacher.item_collab_emb[0].any() and not teacher.item_collab_emb.requires_grad
    with torch.no_grad():
        teacher.item_bias.normal_()
        teacher.collab_proj.weight.normal_()
    # the collaborative part changes the item table
    assert not torch.allclose(teacher.item_vectors(), teacher.item_text_emb + teacher.item_residual.weight)
    x = torch.tensor([[0, 3, 4, 5]])
    teacher.eval()
    with torch.no_grad():
        user = teacher.encode(x)["user"][:, -1]
        cosine = teacher.logit_scale() * (torch.nn.functional.normalize(user, dim=-1) @ teacher.normalized_items().t())
        assert torch.allclose(teacher(x)[0, 1:], (cosine + teacher.item_bias)[0, 1:], atol=1e-5)
    path = teacher.save_pretrained(tmp_path / "ckpt")
    reloaded = load_teacher(path)  # the frozen CF table comes back from head.safetensors
    assert reloaded.collaborative_source == str(tmp_path / "sasrec")
    with torch.no_grad():
        assert torch.equal(reloaded(x), teacher(x))
    with pytest.raises(ValueError, match="another dataset"):
        _teacher(split, tiny, cache_dir, collaborative_embeddings=torch.zeros(split.num_items + 5, 4))
    with pytest.raises(FileNotFoundError, match="student folder"):
        _teacher(split, tiny, cache_dir, collaborative_embeddings=str(tmp_path))


def test_random_init_layers_is_a_seeded_control(split, tiny, cache_dir, tmp_path):
    pretrained = _teacher(split, tiny, cache_dir, item_table="fusion")
    a = _teacher(split, tiny, cache_dir, item_table="fusion", random_init_layers=True)
    b = _teacher(split, tiny, cache_dir, item_table="fusion", random_init_layers=True)
    key = "base_model.model.layers.0.self_attn.q_proj.base_layer.weight"
    weights = {name: dict(t.backbone.named_parameters())[key] for name, t in
               (("pretrained", pretrained), ("a", a), ("b", b))}
    assert not torch.allclose(weights["pretrained"], weights["a"])
    assert torch.equal(weights["a"], weights["b"])  # same seed, same draw
    assert torch.equal(pretrained.item_text_emb, a.item_text_emb)  # item texts still read by the pretrained LLM
    x = torch.tensor([[0, 3, 4, 5]])
    reloaded = load_teacher(a.save_pretrained(tmp_path / "random"))
    a.eval()
    with torch.no_grad():
        assert torch.equal(reloaded(x), a(x))


def test_joint_collaborative_model_adds_frozen_cf_logits(split, tiny, cache_dir, tmp_path):
    from recdistill.student import SASRec, build_student
    from recdistill.student.io import save_student

    torch.manual_seed(0)
    cf = SASRec(num_items=split.num_items, hidden_size=8, num_layers=1, max_len=12).eval()
    save_student(cf, tmp_path / "cf")
    teacher = _teacher(split, tiny, cache_dir, item_table="fusion", item_bias=True,
                       collaborative_model=str(tmp_path / "cf"), collaborative_fusion="joint")
    trainable = {n for n, p in teacher.named_parameters() if p.requires_grad}
    assert "collab_weight" in trainable and not any(n.startswith("collab_model.") for n in trainable)
    teacher.train()
    assert teacher.drop.training and not teacher.collab_model.training  # the CF model never drops out
    teacher.eval()
    with torch.no_grad():
        teacher.collab_weight.fill_(0.7)
        teacher.item_bias.normal_()
    x = torch.tensor([[0, 0, 3, 4, 5], [1, 2, 3, 4, 5]])
    with torch.no_grad():
        user = teacher.encode(x)["user"][:, -1]
        llm = user[:, :teacher.item_dim]
        want = teacher.logit_scale() * (torch.nn.functional.normalize(llm, dim=-1) @ teacher.normalized_items().t())
        want = want + teacher.item_bias + 0.7 * cf(x)
        assert torch.allclose(teacher(x)[:, 1:], want[:, 1:], atol=1e-4)
        # chunked scoring agrees with the full row
        assert torch.allclose(teacher.score_items(user, 10, 20), teacher(x)[:, 10:20], atol=1e-5)
    reloaded = load_teacher(teacher.save_pretrained(tmp_path / "ckpt"))
    with torch.no_grad():
        assert torch.equal(reloaded(x), teacher(x))
    assert reloaded.collaborative_model_source == str(tmp_path / "cf")
    other = build_student("sasrec", num_items=split.num_items + 3, hidden_size=8, num_layers=1, max_len=12)
    with pytest.raises(ValueError, match="another dataset"):
        _teacher(split, tiny, cache_dir, collaborative_model=other)


def test_missing_collaborative_inputs_name_the_field_and_the_fix(split, tiny, cache_dir, tmp_path):
    for field in ("collaborative_model", "collaborative_embeddings"):
        with pytest.raises(FileNotFoundError, match=f"model.{field}=.*recdistill student fit"):
            _teacher(split, tiny, cache_dir, item_table="fusion", **{field: str(tmp_path / "missing")})


def test_ensemble_fusion_mixes_logits_and_picks_alpha_on_validation(split, tiny, cache_dir, tmp_path):
    from recdistill.student import SASRec
    from recdistill.teacher.evaluate import evaluate_teacher
    from recdistill.teacher.fit import fit_teacher
    from recdistill.teacher.hllm import FUSION_GRID

    torch.manual_seed(0)
    cf = SASRec(num_items=split.num_items, hidden_size=8, num_layers=1, max_len=12).eval()
    teacher = _teacher(split, tiny, cache_dir, item_table="fusion", collaborative_model=cf)
    assert "collab_weight" not in dict(teacher.named_parameters())
    x = torch.tensor([[0, 0, 3, 4, 5], [1, 2, 3, 4, 5]])
    teacher.eval()
    with torch.no_grad():
        teacher.fusion_alpha.fill_(0.3)
        user = teacher.encode(x)["user"][:, -1]
        alone = teacher.score_items(user, fuse=False)
        assert torch.allclose(teacher(x)[:, 1:], 0.3 * alone[:, 1:] + 0.7 * cf(x)[:, 1:], atol=1e-5)
        assert torch.isinf(teacher(x)[:, 0]).all()
        assert torch.allclose(teacher.score_items(user, 10, 20), teacher(x)[:, 10:20], atol=1e-5)

    dm = SequentialDataModule.from_split(split, max_len=12, batch_size=16, eval_batch_size=64)
    fit_teacher(teacher, dm, _trainer(2), tmp_path / "fit")
    fit = json.loads((tmp_path / "fit" / "fit.json").read_text())
    best = fit["history"][fit["best_epoch"]]
    alpha = float(teacher.fusion_alpha)
    assert best["valid/fusion_alpha"] == pytest.approx(alpha) and min(abs(a - alpha) for a in FUSION_GRID) < 1e-6
    # the chosen mixture is at least as good on validation as either part alone
    assert best["valid/ndcg@10"] >= max(best["valid/llm_ndcg@10"], best["valid/collaborative_ndcg@10"]) - 1e-6
    metrics = evaluate_teacher(teacher, dm, latency=False)
    assert metrics["valid"]["ndcg@10"] == pytest.approx(best["valid/ndcg@10"], abs=1e-6)
    assert metrics["fusion"]["alpha"] == pytest.approx(float(teacher.fusion_alpha))
    assert metrics["fusion"]["llm_only"]["valid"]["ndcg@10"] == pytest.approx(best["valid/llm_ndcg@10"], abs=1e-6)
    assert metrics["fusion"]["collaborative_only"]["valid"]["ndcg@10"] == pytest.approx(
        best["valid/collaborative_ndcg@10"], abs=1e-6)
    reloaded = load_teacher(teacher.save_pretrained(tmp_path / "ckpt"))
    assert float(reloaded.fusion_alpha) == pytest.approx(float(teacher.fusion_alpha))
    with torch.no_grad():
        assert torch.equal(reloaded(x), teacher(x))
    with pytest.raises(ValueError, match="collaborative_fusion"):
        _teacher(split, tiny, cache_dir, collaborative_model=cf, collaborative_fusion="sum")


def test_llm_part_of_a_hybrid_teacher_gets_gradients(split, tiny, cache_dir):
    from recdistill.student import SASRec

    cf = SASRec(num_items=split.num_items, hidden_size=8, num_layers=1, max_len=12)
    for fusion in ("ensemble", "joint"):
        teacher = _teacher(split, tiny, cache_dir, item_table="fusion", collaborative_model=cf,
                           collaborative_fusion=fusion)
        batch = {"input_ids": torch.tensor([[0, 1, 2, 3], [4, 5, 6, 7]]), "labels": torch.tensor([[0, 2, 3, 4], [5, 6, 7, 8]])}
        teacher.loss(batch).backward()
        lora = [p for n, p in teacher.named_parameters() if "lora_B" in n]
        assert teacher.out_proj.weight.grad is not None and teacher.out_proj.weight.grad.abs().sum() > 0
        assert all(p.grad is not None for p in lora)
        assert all(p.grad is None for p in teacher.collab_model.parameters())


def test_item_text_pooling_options(tiny, split, tmp_path):
    """Mean vs last token, the layers averaged (0 = token embeddings), an instruction left out of the mean;
    each setting is its own cache entry."""
    model, tok, ref = load_base_model(str(tiny))
    texts = list(split.item_text[:5])
    ids = [tok.encode(t, add_special_tokens=False) for t in texts]
    kw = dict(ref=ref, cache_dir=tmp_path, progress=False, standardize=False)
    tokens = encode_item_texts(model, tok, texts, layers=[0], **kw)
    table = model.model.embed_tokens.weight.detach()
    want = torch.stack([table[torch.tensor(i)].mean(0) for i in ids])
    assert torch.allclose(tokens, want, atol=1e-5)
    last = encode_item_texts(model, tok, texts, pooling="last", **kw)
    with torch.no_grad():
        state = model.model(input_ids=torch.tensor([ids[0]])).last_hidden_state[0, -1]
    assert torch.allclose(last[0], state, atol=1e-4)
    template = "represent this item for recommendation {text}"
    pooled_all = encode_item_texts(model, tok, texts, template=template, layers=[0], **kw)
    text_only = encode_item_texts(model, tok, texts, template=template, layers=[0], text_only=True, **kw)
    assert torch.allclose(text_only, tokens, atol=1e-5)  # token embeddings: the prefix drops out exactly
    assert not torch.allclose(pooled_all, tokens, atol=1e-3)
    assert len(list(tmp_path.glob("*.safetensors"))) == 4
    with pytest.raises(ValueError, match="pooling"):
        encode_item_texts(model, tok, texts, pooling="max", **kw)


def test_fusion_weight_is_chosen_on_the_validation_set_of_all_processes(split, tiny, cache_dir):
    """Under DDP each rank validates a shard; the alpha grid's metrics are summed over ranks before
    the choice, so every rank picks the alpha of the whole set (not of its own shard)."""
    from types import SimpleNamespace

    from recdistill.metrics import ranking_metric_sums
    from recdistill.student import SASRec

    torch.manual_seed(0)
    cf = SASRec(num_items=split.num_items, hidden_size=8, num_layers=1, max_len=12).eval()
    from recdistill.teacher.lightning_module import TeacherLightningModule

    teacher = TeacherLightningModule(
        _teacher(split, tiny, cache_dir, item_table="fusion", collaborative_model=cf)).eval()
    dm = SequentialDataModule.from_split(split, max_len=12, eval_batch_size=7)
    batches = list(dm.dataloader("valid"))
    half = len(batches) // 2

    def shard_sums(shard):
        teacher.on_validation_epoch_start()
        with torch.no_grad():
            for i, b in enumerate(shard):
                teacher.validation_step(b, i)
        ks = teacher.teacher.hparams.eval_ks or [5, 10, 20]
        return {a: ranking_metric_sums(acc.ranks(), ks) for a, acc in teacher._val_mix.items()}

    def choose(shard, other=None):
        other_sums = shard_sums(other) if other else None
        shard_sums(shard)

        def reduce(tensor, reduce_op):
            assert reduce_op == "sum"
            return tensor + torch.cat([other_sums[a] for a in teacher._val_mix]).to(tensor)

        teacher._trainer = SimpleNamespace(world_size=2 if other else 1, strategy=SimpleNamespace(reduce=reduce))
        try:
            return teacher._gathered_mix_metrics()
        finally:
            teacher._trainer = None

    whole = choose(batches)
    for mine, theirs in ((batches[:half], batches[half:]), (batches[half:], batches[:half])):
        gathered = choose(mine, theirs)
        assert gathered.keys() == whole.keys()
        for alpha in whole:
            assert gathered[alpha]["ndcg@10"] == pytest.approx(whole[alpha]["ndcg@10"], abs=1e-12)


def test_the_teacher_is_a_plain_module_and_its_module_imports_no_lightning():
    """The model is an ``nn.Module`` held by ``TeacherLightningModule`` (the loop), not a LightningModule."""
    import subprocess
    import sys

    import lightning as L

    from recdistill.teacher.hllm import HLLMTeacher
    from recdistill.teacher.lightning_module import TeacherLightningModule
    from recdistill.teacher.text_prompt import TextPromptTeacher

    assert issubclass(HLLMTeacher, torch.nn.Module) and not issubclass(HLLMTeacher, L.LightningModule)
    assert not issubclass(TextPromptTeacher, L.LightningModule)
    assert issubclass(TeacherLightningModule, L.LightningModule)
    code = ("import sys, recdistill.teacher.hllm, recdistill.teacher.text_prompt; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('lightning', 'pytorch_lightning')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out


def test_subclass_arguments_are_recorded_with_the_base_class_arguments(tmp_path):
    """``hparams`` (and so ``teacher.json``) holds the arguments of every constructor on the chain."""
    from recdistill.teacher.testing import make_tiny_llama, planted_split
    from recdistill.teacher.text_prompt import TextPromptTeacher

    split = planted_split(num_users=10, num_items=8, mean_length=6, seed=0)
    tiny = make_tiny_llama(tmp_path / "tiny", texts=split.item_text, num_layers=2)
    teacher = TextPromptTeacher(num_items=split.num_items, item_text=split.item_text, base_model=str(tiny),
                                num_layers=2, max_history_items=3, lr=0.02, progress=False,
                                embedding_cache_dir=str(tmp_path / "emb"))
    hp = teacher.hparams
    assert (hp.max_history_items, hp.num_layers, hp.lr, hp.item_table) == (3, 2, 0.02, "trainable")
    assert "item_text" not in hp and "kwargs" not in hp
    args = teacher.init_args()
    assert args["max_history_items"] == 3 and args["lr"] == 0.02 and "trust_remote_code" not in args

