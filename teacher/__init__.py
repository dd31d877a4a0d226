"""recdistill.teacher: LoRA-tuned LLM teacher, signal emission and the signals cache.

Public API (resolved lazily so ``import recdistill.teacher`` stays cheap):

- ``load_base_model``, ``BaseModelRef``, ``truncate_layers``   (teacher.loading)
- ``encode_item_texts``                                        (teacher.item_encoder)
- ``HLLMTeacher``, ``load_teacher``                            (teacher.hllm)
- ``TextPromptTeacher``                                        (teacher.text_prompt)
- ``TeacherLightningModule``                                   (teacher.lightning_module)
- ``fit_teacher``                                              (teacher.fit)
- ``emit_signals``                                             (teacher.emit)
- ``CacheMismatchError``, ``MissingSignalError``               (teacher.cache_format)
- ``TeacherSignals``                                           (teacher.cache_reader)
- ``import_dllm2rec``, ``IdMappingError``                      (teacher.dllm2rec_import)
- ``evaluate_teacher``                                         (teacher.evaluate)
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY: dict[str, str] = {
    "load_base_model": "recdistill.teacher.loading",
    "BaseModelRef": "recdistill.teacher.loading",
    "truncate_layers": "recdistill.teacher.loading",
    "encode_item_texts": "recdistill.teacher.item_encoder",
    "HLLMTeacher": "recdistill.teacher.hllm",
    "load_teacher": "recdistill.teacher.hllm",
    "TextPromptTeacher": "recdistill.teacher.text_prompt",
    "TeacherLightningModule": "recdistill.teacher.lightning_module",
    "fit_teacher": "recdistill.teacher.fit",
    "emit_signals": "recdistill.teacher.emit",
    "CacheMismatchError": "recdistill.teacher.cache_format",
    "MissingSignalError": "recdistill.teacher.cache_format",
    "TeacherSignals": "recdistill.teacher.cache_reader",
    "import_dllm2rec": "recdistill.teacher.dllm2rec_import",
    "IdMappingError": "recdistill.teacher.dllm2rec_import",
    "evaluate_teacher": "recdistill.teacher.evaluate",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'recdistill.teacher' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
