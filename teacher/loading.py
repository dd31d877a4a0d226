"""Load the base LLM of a teacher: a hub id, a local HF folder, a ``.gguf`` file or an asset name.

Every teacher artefact records a :class:`BaseModelRef` (where the base came from, the GGUF file
and its sha256, a config summary) so the frozen base can be reloaded from its source: only what
was trained (peft adapter + head weights) is ever saved. A GGUF-loaded model cannot be saved
back by ``save_pretrained`` anyway.

``trust_remote_code`` is off unless asked for; nothing is downloaded when ``local_files_only``
(the default for anything that is not a hub id).

Pinning and verification, for every kind of source: a hub model is loaded at ``revision`` (a
checkpoint records the resolved commit and passes it back), and ``weights_sha256`` is computed
from the files that were loaded (the GGUF file, or the config + weight files of the local folder or
of the hub snapshot in the Hugging Face cache). When it cannot be computed, a
:class:`~recdistill.teacher.checkpoint.BaseModelCheckWarning` says so and the ref records ``None``.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from recdistill.atomic import sha256_file
from torch import nn

# Asset names that resolve to a GGUF file in the recdistill cache (see ``recdistill.assets``).
ASSET_MODELS: dict[str, str] = {"smollm2-135m": "SmolLM2-135M-Instruct.Q4_1.gguf"}


@dataclass(frozen=True)
class BaseModelRef:
    """Where a base model came from; stored in every teacher artefact and the signals manifest."""

    source: str  # asset name, hub id, folder or .gguf path as given
    kind: str  # "asset" | "gguf" | "folder" | "hub"
    path: str = ""  # resolved folder or file on this machine (informational)
    gguf_file: str | None = None
    weights_sha256: str | None = None  # sha256 of the GGUF file / of the folder's weight files
    revision: str | None = None  # hub commit hash when known
    model_type: str = ""
    hidden_size: int = 0
    num_hidden_layers: int = 0  # of the full base model
    vocab_size: int = 0
    dtype: str = "float32"
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "BaseModelRef":
        known = {f for f in cls.__dataclass_fields__}  # type: ignore[attr-defined]
        return cls(**{k: v for k, v in d.items() if k in known})

    def identity(self) -> dict[str, Any]:
        """Fields that identify the weights (paths on this machine excluded)."""
        return {
            "source": self.source,
            "gguf_file": self.gguf_file,
            "weights_sha256": self.weights_sha256,
            "revision": self.revision,
            "model_type": self.model_type,
            "hidden_size": self.hidden_size,
            "num_hidden_layers": self.num_hidden_layers,
        }

    def hash(self) -> str:
        blob = json.dumps(self.identity(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()


def _folder_weights_sha256(folder: Path) -> str | None:
    files = sorted(
        p for p in folder.iterdir()
        if p.is_file() and (p.suffix in (".safetensors", ".bin", ".gguf") or p.name == "config.json")
    )
    if not files:
        return None
    digest = hashlib.sha256()
    for p in files:
        digest.update(p.name.encode())
        digest.update(sha256_file(p).encode())
    return digest.hexdigest()


def _hub_snapshot(repo_id: str, revision: str | None, gguf_file: str | None) -> Path | None:
    """The local snapshot folder of a hub model in the Hugging Face cache (``None`` if not found)."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - transformers depends on it
        return None
    try:
        found = try_to_load_from_cache(repo_id, gguf_file or "config.json", revision=revision)
    except Exception:  # noqa: BLE001 - an odd repo id or cache layout: report "could not verify" instead
        return None
    return Path(found).parent if isinstance(found, str) else None


def resolve_source(source: str, gguf_file: str | None = None) -> tuple[str, Path | str, str | None]:
    """Return ``(kind, folder_or_hub_id, gguf_file_name)`` for a model source."""
    if source in ASSET_MODELS:
        from recdistill.assets import asset_paths

        name = gguf_file or ASSET_MODELS[source]
        paths = asset_paths(source)
        if name not in paths:
            raise FileNotFoundError(f"asset {source!r} has no file {name!r}; it has {sorted(paths)}")
        return "asset", paths[name].parent, name
    path = Path(source).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise FileNotFoundError(f"GGUF file {path} does not exist")
        return "gguf", path.parent, path.name
    if path.is_dir():
        if gguf_file is not None and not (path / gguf_file).is_file():
            raise FileNotFoundError(f"{path} has no GGUF file {gguf_file!r}")
        return "folder", path, gguf_file
    if path.exists():
        raise ValueError(f"{path} is neither a model folder nor a .gguf file")
    # a hub id is "name" or "owner/name"; anything with more path parts, or whose parent folder
    # exists, is a local path that is missing (a one-line error, not a hub lookup)
    if source.startswith((".", "/", "~")) or source.count("/") > 1 or (
            "/" in source and path.parent != Path(".") and path.parent.is_dir()):
        raise FileNotFoundError(f"model folder {path} does not exist (model.base_model: an asset name, a .gguf "
                                f"file, a local model folder or a hub id 'owner/name')")
    return "hub", source, gguf_file


def load_base_model(
    source: str,
    *,
    gguf_file: str | None = None,
    trust_remote_code: bool = False,
    dtype: torch.dtype = torch.float32,
    num_layers: int | None = None,
    local_files_only: bool | None = None,
    attn_implementation: str | None = None,
    load_tokenizer: bool = True,
    revision: str | None = None,
) -> tuple[nn.Module, Any, BaseModelRef]:
    """Load a causal LM and its tokenizer; returns ``(model, tokenizer, ref)``.

    ``source`` is an asset name (``"smollm2-135m"``), a ``.gguf`` path, a local HF folder (with
    ``gguf_file`` naming a GGUF inside it, optionally) or a hub id. GGUF weights are
    de-quantized to ``dtype`` by transformers. ``num_layers`` keeps only the first n decoder
    layers (see :func:`truncate_layers`). The tokenizer is ``None`` when the folder has none.
    ``revision`` (hub ids only: branch, tag or commit) pins the hub snapshot; ``ref.revision`` is the
    resolved commit either way.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kind, where, gguf = resolve_source(source, gguf_file)
    if local_files_only is None:
        local_files_only = kind != "hub"
    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code, "local_files_only": local_files_only}
    if gguf is not None:
        kwargs["gguf_file"] = gguf
    if kind == "hub" and revision:
        kwargs["revision"] = revision
    model_kwargs = dict(kwargs, dtype=dtype)
    if attn_implementation is not None:
        model_kwargs["attn_implementation"] = attn_implementation
    model = AutoModelForCausalLM.from_pretrained(str(where), **model_kwargs)
    model.eval()
    tokenizer = None
    if load_tokenizer:
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(where), **kwargs)
        except (OSError, ValueError, TypeError, KeyError):
            tokenizer = None
    cfg = model.config
    resolved_revision = (getattr(cfg, "_commit_hash", None) or revision) if kind == "hub" else None
    weights_sha = None
    if kind == "hub":
        snapshot = _hub_snapshot(str(where), resolved_revision, gguf)
        if snapshot is not None:
            where = snapshot
            weights_sha = sha256_file(snapshot / gguf) if gguf is not None else _folder_weights_sha256(snapshot)
    elif gguf is not None:
        weights_sha = sha256_file(Path(where) / gguf)
    else:
        weights_sha = _folder_weights_sha256(Path(where))
    if weights_sha is None:
        from recdistill.teacher.checkpoint import BaseModelCheckWarning

        warnings.warn(f"could not compute the weights sha256 of base model {source!r} ({where}): its weights "
                      f"cannot be verified when a teacher is reloaded", BaseModelCheckWarning, stacklevel=2)
    ref = BaseModelRef(
        source=source,
        kind=kind,
        path=str(where),
        gguf_file=gguf,
        weights_sha256=weights_sha,
        revision=resolved_revision,
        model_type=str(getattr(cfg, "model_type", "")),
        hidden_size=int(getattr(cfg, "hidden_size", 0)),
        num_hidden_layers=int(getattr(cfg, "num_hidden_layers", 0)),
        vocab_size=int(getattr(cfg, "vocab_size", 0)),
        dtype=str(dtype).replace("torch.", ""),
    )
    if num_layers is not None:
        truncate_layers(model, num_layers)
    return model, tokenizer, ref


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder layer list of a causal LM (``model.model.layers`` for llama-style models)."""
    inner = getattr(model, "model", model)
    layers = getattr(inner, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise TypeError(f"{type(model).__name__} has no `.model.layers` ModuleList; cannot truncate it")
    return layers


def truncate_layers(model: nn.Module, num_layers: int) -> nn.Module:
    """Keep the first ``num_layers`` decoder layers in place (SLMRec / HLLM style)."""
    layers = decoder_layers(model)
    if not 1 <= num_layers <= len(layers):
        raise ValueError(f"num_layers must be in 1..{len(layers)}, got {num_layers}")
    inner = getattr(model, "model", model)
    inner.layers = nn.ModuleList(list(layers)[:num_layers])
    cfg = model.config
    cfg.num_hidden_layers = num_layers
    layer_types = getattr(cfg, "layer_types", None)
    if isinstance(layer_types, list):
        cfg.layer_types = layer_types[:num_layers]
    if getattr(inner, "config", cfg) is not cfg:
        inner.config.num_hidden_layers = num_layers
    return model
