"""``quiet_known_noise`` drops the known-harmless library messages (Lightning's tips, the Llama
tokenizer's legacy-behaviour note) and nothing else from those loggers."""

from __future__ import annotations

import logging
import warnings

from recdistill.training import quiet_known_noise


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_known_library_notes_are_dropped_and_other_records_kept() -> None:
    quiet_known_noise()
    quiet_known_noise()  # idempotent: one filter per logger
    for name, noise in (("transformers.models.llama.tokenization_llama_fast",
                         "You are using the default legacy behaviour of the <class 'LlamaTokenizerFast'>."),
                        ("lightning.pytorch.utilities.rank_zero", "💡 Tip: try our cloud")):
        logger = logging.getLogger(name)
        assert sum(type(f).__name__ == "_NoTips" for f in logger.filters) == 1
        sink = _Collect()
        logger.addHandler(sink)
        try:
            logger.warning(noise)
            logger.warning("the tokenizer file is missing")
        finally:
            logger.removeHandler(sink)
        assert sink.messages == ["the tokenizer file is missing"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        quiet_known_noise()  # re-installs its ignore filters on top of "default"
        warnings.warn("Found 3 module(s) in eval mode at the start of training. ok")
        warnings.warn("something else")
    assert [str(w.message) for w in caught] == ["something else"]
