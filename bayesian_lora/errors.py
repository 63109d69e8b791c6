"""Errors that mean bad input (a config value, a data file, a run folder), importable without torch.

The entry points (``bayesian_lora.entry``) print an :class:`InputError` as one ``error: ...``
line, without a traceback, and exit with status 2.
"""

from __future__ import annotations


class InputError(Exception):
    """Bad input, refused: the message names the key or file, the value and what is allowed."""


class MissingInputError(InputError, FileNotFoundError):
    """A folder or file the command names does not exist (or is not what it should be)."""
