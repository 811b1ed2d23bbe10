"""User-facing errors.

Every problem caused by what a user typed or handed us (a bad flag, a file that is not a run, a
dataset that is not cached) raises :class:`DriftscopeError` with a one-line message that names the
problem and the fix. The CLI prints it without a traceback and exits with :attr:`exit_code`.
"""

from __future__ import annotations


class DriftscopeError(Exception):
    """A problem with the user's input. ``str(err)`` is a one-line message naming the fix."""

    exit_code: int = 2


class ConfigError(DriftscopeError):
    """An invalid configuration value (unknown name, out-of-range number, bad TOML)."""


class DataError(DriftscopeError):
    """A dataset that cannot be loaded or partitioned as asked."""


class RunFileError(DriftscopeError):
    """A file that is not a readable driftscope run, or a query it cannot answer."""


class DivergenceError(DriftscopeError):
    """Training produced a non-finite loss; the run file keeps every completed round."""

    exit_code = 3


class SettingsWarning(UserWarning):
    """A legal but questionable combination of settings (e.g. momentum with control variates),
    from :meth:`Algorithm.warnings`: :func:`driftscope.train` and the Flower strategy warn with it
    (:func:`driftscope.algorithms.warn_settings`); the CLI prints it as ``driftscope: warning:``."""
