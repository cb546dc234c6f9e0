"""One place that configures logging for the `streamvec` command, and only if nobody else has."""

from __future__ import annotations

import logging
import os

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Libraries whose INFO lines say nothing an operator can act on: faiss's loader names each CPU
# variant it tries (the command imports faiss only once logging is set up, so they would show).
QUIET = ("faiss.loader",)


def configure(level: str | None = None) -> None:
    """Configure the root logger once, from `level` or `STREAMVEC_LOG_LEVEL` (default INFO)."""
    root = logging.getLogger()
    if root.handlers:
        return
    chosen = (level or os.environ.get("STREAMVEC_LOG_LEVEL") or "INFO").upper()
    logging.basicConfig(level=chosen, format=FORMAT)
    for name in QUIET:
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
