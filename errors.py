"""Errors a user can fix, and how the ``recdistill`` command reports them.

Every *expected* failure of the command line (missing or unreadable data, a bad column map, an
unknown recipe key or a wrong type, a cache built with other settings, a missing asset, a
checkpoint from another dataset, a missing config file) ends in one line on stderr that names the
field, file or fix, and exit status 2, without a Python traceback. ``--debug`` (or
``RECDISTILL_DEBUG=1``) re-raises instead, so the traceback is shown.

Code raises :class:`UserError` (or a subclass) for such failures; :func:`user_message` also
recognises the established error types of the package (``DataFormatError``,
``CacheMismatchError``, ``AssetError``, ...) and jsonargparse's parse errors, so those need no
wrapping. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

DEBUG_ENV = "RECDISTILL_DEBUG"
EXIT_USER_ERROR = 2

_PACKAGE_ROOT = Path(__file__).resolve().parent


class UserError(Exception):
    """An expected failure caused by the user's input; the message names the field, file or fix."""

    exit_code = EXIT_USER_ERROR


class ConfigError(UserError, ValueError):
    """A recipe or command-line setting is unknown, has the wrong type or is missing."""


class CheckpointError(UserError, ValueError):
    """A saved artefact (``teacher.json``, ``student.json``, weights) is missing, malformed or unsafe."""


def debug_enabled() -> bool:
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


# (module, class name) of the package's own error types that describe user-fixable failures; looked up in
# sys.modules so that classifying an error never imports heavy modules.
_KNOWN: tuple[tuple[str, str], ...] = (
    ("recdistill.data.columns", "DataFormatError"),
    ("recdistill.assets", "AssetError"),
    ("recdistill.teacher.cache_format", "CacheMismatchError"),  # also CacheVersionError
    ("recdistill.teacher.cache_format", "MissingSignalError"),
    ("recdistill.teacher.signals", "CacheMismatchError"),
    ("recdistill.distill.terms", "TermConfigError"),
    ("recdistill.export.runtime", "VocabularyMismatchError"),
    ("recdistill.teacher.dllm2rec_import", "IdMappingError"),
    ("recdistill.student", "UnknownStudentError"),
    ("jsonargparse", "ArgumentError"),
    ("argparse", "ArgumentError"),
)


def _known_types() -> tuple[type, ...]:
    found = []
    for module, name in _KNOWN:
        cls = getattr(sys.modules.get(module), name, None)
        if isinstance(cls, type) and issubclass(cls, BaseException):
            found.append(cls)
    return tuple(found)


def _raised_by_us(exc: BaseException) -> bool:
    """Whether the innermost frame of ``exc``'s traceback is recdistill's own code (not a dependency)."""
    tb, last = exc.__traceback__, None
    while tb is not None:
        last, tb = tb, tb.tb_next
    if last is None:
        return False
    filename = Path(last.tb_frame.f_code.co_filename).resolve()
    if not filename.is_relative_to(_PACKAGE_ROOT):
        return False
    return "site-packages" not in filename.relative_to(_PACKAGE_ROOT).parts  # a venv inside the checkout


def one_line(message: str) -> str:
    """Collapse a (possibly multi-line) message into one line."""
    return " ".join(part.strip() for part in str(message).splitlines() if part.strip())


def user_message(exc: BaseException) -> str | None:
    """The one-line message to show for an expected failure, or ``None`` if ``exc`` is a bug."""
    if isinstance(exc, UserError) or isinstance(exc, _known_types()):
        text = str(exc)
    elif isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)) \
            and _raised_by_us(exc):
        text = str(exc)
    elif isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError)) and getattr(exc, "filename", None):
        text = f"{exc.strerror or type(exc).__name__}: {exc.filename}"  # e.g. open() of a path the user gave
    else:
        return None
    return one_line(text) or type(exc).__name__


def own_cause(exc: BaseException) -> BaseException | None:
    """The first exception in ``exc``'s cause chain that is an expected failure or was raised by recdistill's
    own code (jsonargparse wraps constructor errors in a dump of the whole config)."""
    seen: set[int] = set()
    current = exc.__cause__ or exc.__context__
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if user_message(current) is not None or _raised_by_us(current):
            return current
        current = current.__cause__ or current.__context__
    return None


__all__ = ["CheckpointError", "ConfigError", "DEBUG_ENV", "UserError", "debug_enabled", "one_line", "own_cause",
           "user_message"]
