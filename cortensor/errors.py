"""The error hierarchy, and the two tables that decide what an error makes happen.

No handler chooses its own reaction to an error. `DISPOSITION` says what a consumer does
with the message whose handling raised (ack, requeue with back-off, dead-letter, or a
`rejected` verdict to the user); `EXIT_CODE` says what the command line exits with. Both
are looked up along the error's class hierarchy, so a new error inherits its parent's
row until it is given its own.

Control signals are not errors: a job that is refused or a message that is parked is a
value a handler returns (cortensor.protocol.intake.Rejected, Undeliverable), never an
exception that unwinds the stack.
"""

from __future__ import annotations

import random
from enum import StrEnum
from typing import TypeVar

_V = TypeVar("_V")


class CortensorError(Exception):
    """Root of every error Cortensor raises on purpose."""


class RetryableError(CortensorError):
    """A transient failure: the same operation may succeed later."""


class PermanentError(CortensorError):
    """A failure that no retry will fix."""


class BadInput(PermanentError, ValueError):
    """The user's input cannot be processed; the message tells them what to change.

    Also a ValueError, so that pydantic validators may raise it and report it as the
    field's error, and so that callers that catch ValueError keep working.
    """


class BadSetting(BadInput):
    """A `CORTENSOR_*` setting is invalid; the message names it."""


class SetupIncomplete(PermanentError):
    """The installation lacks something an operator must add first: a migration, the
    prepared models, a package file. The message names the command that adds it."""


class ModelsNotPrepared(SetupIncomplete):
    """The models directory lacks a variant; run `cortensor models prepare`."""


class NoEligibleNodes(RetryableError):
    """Not enough live nodes can serve the job now; more may join before its deadline."""


class LedgerUnavailable(RetryableError):
    """PostgreSQL could not be reached."""


class BrokerUnavailable(RetryableError):
    """RabbitMQ or NATS could not be reached."""


class NoVerdictYet(RetryableError):
    """The job has no verdict yet; ask again later."""


class UnknownJob(PermanentError):
    """The network has no record of a job: never submitted, submitted under another
    name, or past the retention period."""


class Busy(RetryableError):
    """The network refused new work because it is full: a bounded queue reached its
    limit (RabbitMQ's `reject-publish` overflow nacked the message). Nothing was
    accepted; send it again later, after a back-off."""


class Disposition(StrEnum):
    """What a consumer does with a message once its handling ended."""

    ACK = "ack"
    """Done: the work is durable, or there is nothing left to do with the message."""
    REQUEUE = "requeue"
    """Give it back to the broker after a back-off; the queue's delivery limit
    dead-letters it when the retries run out."""
    DEAD_LETTER = "dead-letter"
    """Park it on the dead-letter queue with the reason in `x-cortensor-reason`."""
    REJECT = "reject"
    """Answer the user with a `rejected` verdict that says why, then ack."""


DISPOSITION: dict[type[BaseException], Disposition] = {
    BadInput: Disposition.REJECT,
    PermanentError: Disposition.DEAD_LETTER,
    CortensorError: Disposition.DEAD_LETTER,
    RetryableError: Disposition.REQUEUE,
    Busy: Disposition.REQUEUE,  # a full queue downstream: hold the message, try later
    # A fault nobody foresaw (a bug, a dropped connection inside a library): retried,
    # and dead-lettered by the queue's delivery limit if it keeps happening.
    Exception: Disposition.REQUEUE,
}
"""Error class -> what a consumer does with the message (the nearest class wins)."""

EXIT_OK = 0
EXIT_NO = 1
"""The command ran and its answer is no: a job not verified, a check that found
differences, stale files. Not an error."""

EXIT_CODE: dict[type[BaseException], int] = {
    BadInput: 2,  # like click's own usage errors: change the command or its input
    RetryableError: 3,  # a server is unreachable, or no verdict yet: try again later
    Busy: 75,  # EX_TEMPFAIL: the network is full and accepted nothing; retry later
    NoVerdictYet: 5,  # the network accepted the job and has not decided it yet
    UnknownJob: 6,  # the network has no record of the job
    PermanentError: 4,  # the setup is incomplete: do what the message says, then retry
    CortensorError: 4,
    Exception: 70,  # a bug (EX_SOFTWARE): the traceback is printed
}
"""Error class -> exit status of the `cortensor` command (the nearest class wins)."""


def _nearest(table: dict[type[BaseException], _V], exc: BaseException) -> _V:
    for cls in type(exc).__mro__:
        if cls in table:
            return table[cls]
    raise LookupError(f"{type(exc).__name__} has no row in the table")


def disposition(exc: BaseException) -> Disposition:
    """What a consumer does with the message whose handling raised `exc`."""
    return _nearest(DISPOSITION, exc)


def exit_code(exc: BaseException) -> int:
    """The exit status of a command that ended with `exc`."""
    return _nearest(EXIT_CODE, exc)


def backoff_s(attempt: int, *, base_s: float, cap_s: float, rng: random.Random) -> float:
    """How long to wait before retry number `attempt` (1 for the first): doubling from
    `base_s` up to `cap_s`, the upper half drawn at random so that consumers that failed
    together do not retry together."""
    if attempt < 1:
        raise ValueError(f"attempt counts from 1, not {attempt}")
    ceiling = min(cap_s, base_s * 2.0 ** min(attempt - 1, 60))
    return ceiling / 2 + rng.uniform(0.0, ceiling / 2)
