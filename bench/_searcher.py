"""`streamvec searcher` with FAISS search-time parameters (efSearch, nprobe) set on every segment.

Usage: python bench/_searcher.py --search-params efSearch=32 --collection NAME [searcher flags]

The searcher serves segments with the parameters their snapshot was built with (HNSW efSearch
64); the QPS-vs-recall sweep needs others without rebuilding. This wraps the segment loader so
every segment the searcher loads, at start-up or later, gets the parameters through FAISS's own
ParameterSpace, then runs the ordinary `streamvec searcher` command.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: the repo root must win over bench/
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse
import logging

import faiss

from searcher import segments
from streamvec import commands

log = logging.getLogger(__name__)


def apply_params(index: faiss.Index, params: str) -> bool:
    """Set `params` ("efSearch=32,nprobe=8") on an index; False if it has none of them."""
    try:
        faiss.ParameterSpace().set_index_parameters(index, params)
    except RuntimeError:  # e.g. efSearch on a Flat index: nothing to tune there
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    """Install the tuned loader and run `streamvec searcher` with the remaining flags."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], add_help=True)
    parser.add_argument("--search-params", required=True,
                        help="FAISS ParameterSpace string, e.g. efSearch=32 or nprobe=8")
    args, rest = parser.parse_known_args(argv)
    plain_load = segments.load

    def tuned_load(store, record, identity=None):
        segment = plain_load(store, record, identity)
        if not apply_params(segment.index, args.search_params):
            log.warning("segment=%s: %s does not apply to its index", record.segment_id,
                        args.search_params)
        return segment

    segments.load = tuned_load  # the watcher looks the loader up on the module at each load
    return commands.main(["searcher", *rest])


if __name__ == "__main__":
    sys.exit(main())
