"""The errors that describe a user's input, not a bug.

The command line prints any :class:`NlsegError` as one line on stderr and exits with status 2, without a
traceback; library callers catch them by class. Each subclass is also a ``ValueError`` (or ``OSError``)
so that code written against the older, more generic classes keeps working.
"""
from __future__ import annotations

__all__ = ["CheckpointError", "ConfigError", "DatasetError", "DownloadError", "NlsegError", "OutputError"]


class NlsegError(Exception):
    """A user error: a bad recipe value, data set, checkpoint or output path. The message names the key
    or file, the value found and what is expected."""


class ConfigError(NlsegError, ValueError):
    """A recipe or an override is not valid; the message names the key and the file."""


class DatasetError(NlsegError, ValueError):
    """A data set on disk is not as expected: missing folder, unreadable file, unknown label value."""


class CheckpointError(NlsegError, ValueError):
    """A checkpoint file is missing, unreadable, not an nlseg checkpoint, or for another model."""


class OutputError(NlsegError, OSError):
    """An output path (work dir, ``--out``, ``--output``, ``--export-dir``) cannot be written."""


class DownloadError(NlsegError, OSError):
    """Weights named from :mod:`nlseg.backbones.hub` could not be fetched: no connection, an interrupted
    transfer, a checksum mismatch, or offline mode with the file not in the cache."""
