"""Errors that the CLI prints as one line and turns into a non-zero exit."""

from __future__ import annotations


class AmbError(Exception):
    """An expected failure with a message fit for the user; exit code 1 unless set."""

    exit_code = 1


class ConfigError(AmbError):
    """A setting is wrong: the message names the environment variable or flag to change."""

    exit_code = 2
