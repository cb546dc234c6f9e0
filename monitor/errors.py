"""Errors raised by the monitor package; all derive from `MonitorError`."""

from __future__ import annotations

from streamvec.errors import StreamvecError


class MonitorError(StreamvecError):
    """Base class of every error the monitor package raises on purpose."""


class PinError(MonitorError, ValueError):
    """A reference that cannot be pinned, or a stored one that cannot be read back."""
