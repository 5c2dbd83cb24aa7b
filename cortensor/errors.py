"""The error hierarchy. Each error says whether retrying can help."""

from __future__ import annotations


class CortensorError(Exception):
    """Root of every error Cortensor raises on purpose."""


class RetryableError(CortensorError):
    """A transient failure: the same operation may succeed later."""


class PermanentError(CortensorError):
    """A failure that no retry will fix."""


class BadInput(PermanentError):
    """The user's input cannot be processed; the message tells them what to change."""


class NoEligibleNodes(RetryableError):
    """Not enough live nodes can serve the job now; more may join before its deadline."""


class ModelsNotPrepared(PermanentError):
    """The models directory lacks a variant; run `cortensor models prepare`."""


class LedgerUnavailable(RetryableError):
    """PostgreSQL could not be reached."""
