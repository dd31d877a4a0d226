"""Backward-compatible names: the signal cache was split into

- :mod:`recdistill.teacher.cache_format` — layout, names, dtypes, manifest, score formula,
  verification, safe overwrite (light: no Lightning/transformers/peft);
- :mod:`recdistill.teacher.emit` — the writer (planning, chunked top-K, multi-process emission; Lightning);
- :mod:`recdistill.teacher.cache_reader` — :class:`TeacherSignals` (light).

Importing this module imports the writer (and so Lightning); light callers import
``cache_format`` / ``cache_reader`` directly.
"""

from __future__ import annotations

from recdistill.atomic import sha256_file  # noqa: F401
from recdistill.teacher.cache_format import (  # noqa: F401
    DTYPES, EXAMPLE_ID_SCHEME, FORMAT_VERSION, SCORING, SIGNAL_KEYS, SPLITS, CacheMismatchError, CacheVersionError,
    MissingSignalError, atomic_save_safetensors, atomic_write_json, compare, item_space_hash, read_json, shard_name,
)
from recdistill.teacher.emit import (  # noqa: F401
    SignalShardWriter, SplitPlan, _compare, _read_json, chunked_topk, emit_signals, plan_split, predict_signals,
)
