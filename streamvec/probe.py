"""`python -m streamvec.probe`: ask a local health endpoint, for container health checks.

Images without curl run this from their HEALTHCHECK; it exits 0 on HTTP 200 and 1 otherwise.
"""

from __future__ import annotations

import argparse
import http.client
import sys
from collections.abc import Sequence
from http import HTTPStatus

from pydantic import ValidationError

from streamvec.health import LIVENESS_PATH, READINESS_PATH
from streamvec.settings import Settings, describe_invalid

# A server bound to every interface is probed on the loopback one.
_ANY = {"0.0.0.0", "::", ""}  # noqa: S104 - compared, never bound


def probe(port: int, path: str = LIVENESS_PATH, *, host: str = "127.0.0.1",
          timeout: float = 3.0) -> tuple[int, str]:
    """GET `path` of a health server; return the status and the body's text."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read().decode(errors="replace").strip()
    finally:
        conn.close()


def local_address(bound: str) -> str:
    """Where this machine reaches a server bound to `bound`."""
    return "127.0.0.1" if bound.strip("[]") in _ANY else bound


def main(argv: Sequence[str] | None = None) -> int:
    """Exit 0 when the local health endpoint answers 200 (or when none is configured)."""
    parser = argparse.ArgumentParser(
        prog="python -m streamvec.probe",
        description="Probe this machine's streamvec health endpoint, for container health "
        "checks. Exit 0 on HTTP 200, 1 otherwise. Without --port or STREAMVEC_METRICS_PORT "
        "the process serves no endpoint (a one-shot command), so the probe passes.")
    parser.add_argument("path", nargs="?", default=LIVENESS_PATH,
                        choices=(LIVENESS_PATH, READINESS_PATH),
                        help=f"endpoint to probe (default {LIVENESS_PATH})")
    parser.add_argument("--port", type=int, help="port [env STREAMVEC_METRICS_PORT]")
    parser.add_argument("--host", help="host (default: STREAMVEC_METRICS_HOST, or 127.0.0.1 "
                        "where that is every interface)")
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds (default 3)")
    args = parser.parse_args(argv)
    try:
        settings = Settings()
    except ValidationError as exc:  # its own text repeats input values, secrets included
        print(f"streamvec probe: invalid settings: {describe_invalid(exc)}", file=sys.stderr)
        return 1
    port = args.port if args.port is not None else settings.metrics_port
    host = args.host or local_address(settings.metrics_host)
    if port is None:
        print("streamvec probe: no health endpoint configured; nothing to check")
        return 0
    try:
        status, body = probe(port, args.path, host=host, timeout=args.timeout)
    except OSError as exc:
        print(f"streamvec probe: {host}:{port}{args.path}: {exc}", file=sys.stderr)
        return 1
    print(f"{status} {body}")
    return 0 if status == HTTPStatus.OK else 1


if __name__ == "__main__":
    sys.exit(main())
