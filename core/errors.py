"""User-facing errors: one line, naming the file and the problem.

Library code raises :class:`PkdError` (or a subclass) for anything a user can fix — a malformed
JSON file, a store built by another model, a missing image folder. The CLI prints
``error: <message>`` on one line and exits with status 2; it never shows a traceback for these.
"""

from __future__ import annotations


class PkdError(Exception):
    """A user error; ``str(err)`` is one line of the form ``<file>: <problem>``."""


class StoreMismatch(PkdError):
    """A store was built by another model / with other dims than the caller expects."""
