"""User-facing errors: each becomes one line on stderr and exit code 2 in the command-line tools."""

from __future__ import annotations


class QgenError(Exception):
    """A problem with the user's input (a file, a flag, a shape), with a message that says how to
    fix it. The CLI prints ``error: <message>`` and exits with code 2, without a traceback."""


class DataError(QgenError):
    """A missing, unreadable or malformed data file or folder."""


class FormatError(QgenError):
    """A malformed, truncated or unsupported ``.qgen`` file or checkpoint."""
