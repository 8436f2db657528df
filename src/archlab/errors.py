"""User-facing errors.

Anything a user can cause (a bad config key, an unreadable file, an objective that does not
fit the architecture) raises :class:`ArchlabError`. The CLI prints its message on one line to
stderr and exits with code 2; library users catch it like any exception.
"""

from __future__ import annotations


class ArchlabError(Exception):
    """An error caused by user input: printed as one line, exit code 2, no traceback."""


class ConfigError(ArchlabError, ValueError):
    """A configuration value is unknown, of the wrong type, or inconsistent with another."""
