"""recdistill.student: small, fast students and the registry that builds them by name.

Sequential: ``sasrec``, ``gru4rec``, ``caser``, ``bert4rec``. CTR: ``deepfm``, ``dcnv2``,
``din``, and ``kar`` (any CTR student plus frozen teacher
vectors through a small adapter, ``student/knowledge_features.py``). The contract is in ``student/base.py``.
"""

from __future__ import annotations

import inspect
from typing import Any

from torch import nn

from recdistill.student.base import STUDENTS, Encoded, register_student
from recdistill.student.bert4rec import BERT4Rec
from recdistill.student.caser import Caser
from recdistill.student.dcnv2 import DCNv2
from recdistill.student.deepfm import DeepFM
from recdistill.student.din import DIN
from recdistill.student.gru4rec import GRU4Rec
from recdistill.student.knowledge_features import KnowledgeAugmentedCTR
from recdistill.student.sasrec import SASRec

__all__ = [
    "BERT4Rec", "DCNv2", "DIN", "STUDENTS", "Caser", "DeepFM", "Encoded", "GRU4Rec", "KnowledgeAugmentedCTR", "SASRec",
    "UnknownStudentError", "build_student", "register_student",
]


class UnknownStudentError(KeyError):
    """No student is registered under the requested name (message lists the known names)."""

    def __str__(self) -> str:  # KeyError would print the message inside quotes
        return str(self.args[0])


def build_student(name: str, **kwargs: Any) -> nn.Module:
    """Build the student registered as ``name`` from keyword constructor arguments.

    Raises ``UnknownStudentError`` (a ``KeyError``) listing the known names for an unknown ``name``, and ``TypeError``
    naming the offending argument when ``kwargs`` do not fit the constructor.
    """
    if name not in STUDENTS:
        raise UnknownStudentError(f"unknown student {name!r}; known students: {', '.join(sorted(STUDENTS))}")
    cls = STUDENTS[name]
    signature = inspect.signature(cls.__init__)
    accepted = [p for p in signature.parameters if p != "self"]
    unknown = [k for k in kwargs if k not in accepted]
    if unknown:
        raise TypeError(
            f"student {name!r} got unexpected argument(s) {', '.join(map(repr, unknown))}; "
            f"it accepts: {', '.join(accepted)}"
        )
    try:
        signature.bind(None, **kwargs)
    except TypeError as error:
        raise TypeError(f"student {name!r}: {error}") from None
    return cls(**kwargs)
