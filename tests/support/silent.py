"""A server that accepts connections and never answers: a frozen Redis or broker, on loopback.

The kernel completes each TCP handshake into the listen backlog while nothing reads, which is
what a client of a stopped (SIGSTOP) server sees: a connection that opens, then silence.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager

from streamvec.devstack.ports import LOOPBACK


@contextmanager
def silent_server() -> Iterator[int]:
    """Listen on a free loopback port that never answers; yield the port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind((LOOPBACK, 0))
        listener.listen(64)
        yield listener.getsockname()[1]
