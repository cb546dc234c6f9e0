"""The error type that any command handler raises to report a failure in one line."""


class CommandError(Exception):
    """An error a command reports as one line on stderr with exit status 2."""
