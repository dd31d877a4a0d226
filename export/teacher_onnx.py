"""The text-prompt teacher's LLM on ONNX Runtime, so that teacher and student are timed on one runtime.

``export_teacher_llm(teacher, folder)`` merges the LoRA adapter into a copy of the base model (peft
``merge_and_unload``; the teacher itself is left as it is), writes it with ``save_pretrained`` and
exports it with optimum's ONNX exporter (``main_export``, task ``feature-extraction``: token ids,
attention mask and positions -> last hidden state). :class:`OrtBackbone` then stands in for the
teacher's backbone: the teacher's own prompt building and scoring head run unchanged around ONNX
Runtime, and ``onnx_teacher`` returns such a copy of the teacher.

The hybrid teacher (:class:`~recdistill.teacher.hllm.HLLMTeacher` over item vectors) is not exported
this way: its LLM reads item vectors as ``inputs_embeds``, while optimum's exporter builds its graphs
from token ids; ``export_teacher_llm`` refuses it with that reason.
"""

from __future__ import annotations

import copy
import tempfile
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from torch import nn


#: why a teacher whose LLM reads item vectors (the hybrid teacher) is not exported by optimum
ITEM_INPUTS_NOT_EXPORTED = "its LLM reads item vectors (inputs_embeds); optimum's exporter builds graphs from token ids"


def export_teacher_llm(teacher: nn.Module, output_dir: str | Path) -> Path:
    """Export the LLM of a text-prompt teacher (LoRA merged) with optimum; returns ``model.onnx``."""
    if getattr(teacher, "_uses_item_inputs", True):
        raise TypeError(f"{type(teacher).__name__}: {ITEM_INPUTS_NOT_EXPORTED}; only a text-prompt teacher's LLM "
                        "exports this way")
    from optimum.exporters.onnx import main_export

    backbone = copy.deepcopy(teacher.backbone)
    merged = backbone.merge_and_unload() if hasattr(backbone, "merge_and_unload") else backbone
    output_dir = Path(output_dir)
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # optimum passes transformers a deprecated argument name (a notice per export)
    try:
        with tempfile.TemporaryDirectory(prefix="recdistill-teacher-llm-") as folder, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the tracer's notes on Python-side shape checks (known harmless)
            merged.save_pretrained(folder, safe_serialization=True)
            main_export(folder, output=output_dir, task="feature-extraction", do_validation=False,
                        no_post_process=True)
    finally:
        hf_logging.set_verbosity(verbosity)
    path = output_dir / "model.onnx"
    if not path.is_file():
        raise FileNotFoundError(f"optimum's exporter wrote no {path}")
    return path


class OrtBackbone(nn.Module):
    """An ONNX Runtime session in the place of the teacher's backbone (``last_hidden_state`` only)."""

    def __init__(self, path: str | Path, threads: int = 1) -> None:
        super().__init__()
        from recdistill.export.runtime import make_session

        self.session = make_session(path, threads=threads)
        self.input_names = [i.name for i in self.session.get_inputs()]

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                output_hidden_states: bool = False, **_: Any) -> SimpleNamespace:
        if output_hidden_states:
            raise ValueError("the exported teacher LLM returns the last hidden state only")
        given = {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids}
        feed = {name: np.ascontiguousarray(given[name].detach().cpu().numpy().astype(np.int64))
                for name in self.input_names}
        (hidden,) = self.session.run(["last_hidden_state"], feed)
        return SimpleNamespace(last_hidden_state=torch.from_numpy(hidden))


def onnx_teacher(teacher: nn.Module, onnx_path: str | Path, threads: int = 1) -> nn.Module:
    """A copy of ``teacher`` whose LLM runs on ONNX Runtime (its head and prompts stay in PyTorch)."""
    backbone = teacher.backbone
    teacher.backbone = nn.Identity()  # not deep-copied: the exported graph replaces it
    try:
        twin = copy.deepcopy(teacher)
    finally:
        teacher.backbone = backbone
    twin.backbone = OrtBackbone(onnx_path, threads=threads)
    return twin.eval()


__all__ = ["ITEM_INPUTS_NOT_EXPORTED", "OrtBackbone", "export_teacher_llm", "onnx_teacher"]
