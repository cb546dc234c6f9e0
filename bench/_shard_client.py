"""Query clients that ask one shard's searcher directly: the baseline of a scatter-gather.

As bench/_clients.py, each client is a process of its own: it connects, says `ready` on stdout,
waits for `go` on stdin, sends one-vector requests back to back for the run's length, then
prints one JSON line (its latencies and the seconds it ran). A request takes the round trips
that `Client.search` takes on a sharded collection (name resolution; the shard map's version
read beside the XADD; BLPOP of the reply), but goes to one shard's stream only, so the
difference from a search over every shard is the fan-out and the merge.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: the repo root must win over bench/
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse
import json
import time
import uuid

import numpy as np

from bench._clients import SEARCH_TIMEOUT_S, drive, run_client
from bench._load import LoadResult
from streamvec.settings import Settings


def shard_load(settings: Settings, collection: str, label: str, queries: np.ndarray, *,
               clients: int, seconds: float, k: int = 10, seed: int = 0) -> LoadResult:
    """`clients` processes send one-vector requests to the stream of shard `label` only."""
    return drive(settings, Path(__file__).resolve(),
                 ["--collection", collection, "--shard", label], queries, clients=clients,
                 seconds=seconds, k=k, seed=seed)


def ask_shard(conn, collection: str, label: str, vector: np.ndarray, k: int,
              timeout_s: float = SEARCH_TIMEOUT_S) -> list[str]:
    """One request to shard `label`'s stream, as a sharded `Client.search` sends it; its ids."""
    from searcher import protocol, routing
    from searcher.query import QueryAnswer, QueryRequest

    name = routing.route(conn, collection).target
    request = QueryRequest(uuid.uuid4().hex, name, np.asarray(vector, np.float32).reshape(1, -1),
                           k, timeout_ms=round(timeout_s * 1000),
                           sent_at_ms=time.time() * 1000)
    pipe = conn.pipeline(transaction=False)
    pipe.get(protocol.shard_version_key(name))
    pipe.xadd(protocol.queue_key(name, label), protocol.encode_request(request, label),
              maxlen=protocol.QUEUE_MAXLEN, approximate=True, nomkstream=True)
    _, added = pipe.execute()
    if added is None:
        raise RuntimeError(f"shard {label} of {name} has no request stream")
    got = conn.blpop([protocol.reply_key(name, request.request_id, label)],
                     timeout=timeout_s + protocol.GIVE_UP_MARGIN_MS / 1000)
    if got is None:
        raise RuntimeError(f"shard {label} of {name} did not answer within {timeout_s:g}s")
    _, answer = protocol.decode_reply(got[1])
    if not isinstance(answer, QueryAnswer):
        raise RuntimeError(f"shard {label} of {name}: {answer.code}: {answer.message}")
    return [i for i in answer.ids[0] if i is not None]


def _client(args: argparse.Namespace) -> dict:
    """One client's run: requests to one shard's stream, back to back."""
    # The socket waits past the longest BLPOP a request asks for.
    conn = Settings().redis_client(timeout=SEARCH_TIMEOUT_S + 10)
    try:
        conn.ping()
        return run_client(args.queries, args.seed, args.seconds,
                          lambda v: ask_shard(conn, args.collection, args.shard, v, args.k))
    finally:
        conn.close()


def main(argv: list[str] | None = None) -> None:
    """Run one shard query client (started by `shard_load`, not by hand)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--collection", required=True)
    parser.add_argument("--shard", required=True, help="the shard's label, e.g. 0-3")
    parser.add_argument("--queries", type=Path, required=True, help=".npy file of query rows")
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    print(json.dumps(_client(parser.parse_args(argv))), flush=True)


if __name__ == "__main__":
    main()
