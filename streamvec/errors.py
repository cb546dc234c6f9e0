"""The base of every error streamvec raises on purpose, its categories, and the base package's own.

Each package has an `errors.py` whose classes derive from `StreamvecError`. A class that says
what kind of failure it is also derives from one category below; the command line turns the
category into its exit status, so a new error class needs no entry anywhere else.
"""

from __future__ import annotations


class StreamvecError(Exception):
    """Base class of every error streamvec raises on purpose; the message is for a person."""


class InvalidInput(StreamvecError):
    """A name, value or shape that breaks a rule: asking again the same way fails again."""


class NotFound(StreamvecError):
    """Something named does not exist: a collection, alias, snapshot, generation, challenge."""


class Conflict(StreamvecError):
    """The current state refuses the action: a name clash, a held lock, a registry that moved."""


class Unavailable(StreamvecError):
    """A service or resource the action needs did not answer, or not in time."""


class EmbedderUnavailable(Unavailable):
    """The sentence model cannot be loaded here; the message names the install that fixes it."""


class DevStackError(StreamvecError):
    """The local development stack cannot be fetched, started or checked; the message says why."""


class LogConfigError(InvalidInput):
    """A log level or log format that the logging set-up does not know."""


class ListenError(Conflict):
    """A server of this process cannot listen on its address (taken, or not permitted)."""
