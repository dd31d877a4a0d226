"""recdistill.distill: distillation losses (a registry of named, weighted terms) and the module that trains a student with them."""

from .registry import DISTILL_LOSSES, build_loss, register_loss
# response-based (ranking lists, scores)
from .ranking import RankingDistillationLoss
from .dllm2rec import ImportanceRankingDistillationLoss
from .soft_label import CTRSoftLabelLoss, ListNetLoss, SoftLabelKLLoss
# feature-based (hidden states, embeddings)
from .hidden import HiddenStateAlignmentLoss
from .multilayer import MultiLayerAlignmentLoss, evenly_spaced_mapping
from .contrastive import ContrastiveAlignmentLoss
from .embedding import EmbeddingAlignmentLoss, TeacherEmbeddingFusion, pca_init
# embedding utilisation (KAR-style frozen teacher vectors as CTR features)
from .knowledge_features import KnowledgeSpec, build_knowledge_tables

__all__ = [
    "DISTILL_LOSSES", "build_loss", "register_loss",
    "RankingDistillationLoss", "ImportanceRankingDistillationLoss", "CTRSoftLabelLoss", "ListNetLoss",
    "SoftLabelKLLoss", "HiddenStateAlignmentLoss", "MultiLayerAlignmentLoss", "evenly_spaced_mapping",
    "ContrastiveAlignmentLoss", "EmbeddingAlignmentLoss", "TeacherEmbeddingFusion", "pca_init",
    "KnowledgeSpec", "build_knowledge_tables",
]
