"""Every fault once, with ingest and queries running: nothing acknowledged is lost, nothing dies.

One stack (own Redis and broker, an indexer and a searcher process) serves the whole module,
because starting it costs more than most faults; the scenarios run in file order, each
followed by the same checks. STREAMVEC_FAULTS_SCALE=full (`make faults`) makes every outage
outlast a minute and sends 10,000 poison messages and 10,000 hostile requests.
"""

from __future__ import annotations

import errno
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from indexer.registry import Registry
from ingest import admin
from ingest.spec import CollectionSpec
from searcher import protocol
from searcher.client import Client
from streamvec.redisconn import connect
from tests.support.faultload import (
    HOSTILE_KINDS,
    Ingest,
    Queries,
    dead_letters,
    send_hostile,
    send_poison,
)
from tests.support.faultstack import (
    Stack,
    assert_registered,
    scale,
    search_problems,
    wait_fresh,
)
from tests.support.polling import wait_until

SCALE = scale()
pytestmark = [pytest.mark.faults, pytest.mark.integration,
              pytest.mark.timeout(900 if SCALE.name == "full" else 300)]

SPEC = CollectionSpec("faults", dim=8, partitions=2, index="Flat", seal_rows=300,
                      seal_seconds=2.0)
# The reason a worker must give for each poison kind whose fault has one meaning.
POISON_REASONS = {"wrong_dim": "wrong_dim", "nan": "non_finite",
                  "unknown_version": "unknown_version", "model_version": "model_version"}


@dataclass
class Running:
    """The module's stack with its ingest and query threads and a client for the checks."""

    stack: Stack
    ingest: Ingest
    queries: Queries
    client: Client


def _mount_tmpfs(folder: Path, size_mb: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    mount = shutil.which("mount") or "/bin/mount"
    done = subprocess.run([mount, "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs",
                           str(folder)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.fail(f"the fault suite mounts a {size_mb} MiB tmpfs as the segment store (to fill "
                    f"its disk) and needs root for it: `mount -t tmpfs` failed: "
                    f"{(done.stdout + done.stderr).strip()}")


def _unmount(folder: Path) -> None:
    umount = shutil.which("umount") or "/bin/umount"
    if subprocess.run([umount, str(folder)], capture_output=True, check=False).returncode:
        subprocess.run([umount, "-l", str(folder)], capture_output=True, check=False)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """Start the stack on a size-limited segment store, then ingest and query continuously."""
    stack = Stack(tmp_path_factory.mktemp("faults"), SPEC, SCALE)
    _mount_tmpfs(stack.store, SCALE.disk_mb)
    ingest = queries = client = None
    try:
        stack.start_servers()
        admin.create_collection(stack.settings, SPEC)
        stack.start_searcher()
        stack.start_indexer()
        stack.wait_ready()
        ingest = Ingest(stack.settings, SPEC.name, SPEC.dim)
        ingest.start()
        queries = Queries(stack.settings, SPEC.name, ingest)
        queries.start()
        client = Client(settings=stack.settings)
        yield Running(stack, ingest, queries, client)
    finally:
        for part in (queries, ingest):
            if part is not None:
                part.stop()
        if client is not None:
            client.close()
        codes = stack.stop_roles()
        stack.stop_servers()
        _unmount(stack.store)
    assert codes == {r: 0 for r in codes}, f"roles did not stop cleanly: {codes}"


@pytest.fixture
def fault(run: Running) -> Iterator[Running]:
    """Bring back any role a failed scenario left dead, so each scenario is judged alone."""
    # A role that died was already reported by the scenario that killed it.
    run.stack.revive()
    yield run


def check_after(run: Running, name: str, healed_at: float, mark: int,
                outage_s: float | None = None) -> None:
    """The checks after every fault: roles alive and ready, every acknowledged row served once,
    no deleted row back, the registry covering every offset once, every search answered in time.
    """
    stack = run.stack
    stack.assert_roles_alive()
    stack.wait_ready()
    with run.ingest.paused(SCALE.recover_s) as snap:
        assert snap.live(), "no acknowledged row yet"
        wait_fresh(run.client, SPEC.name, snap, SCALE.recover_s)
        fresh = time.monotonic() - healed_at
        checked, lost, problems = search_problems(run.client, SPEC.name, snap)
        stack.record("rows_checked", max(stack.figures.get("rows_checked", 0), checked))
        stack.record("rows_lost", stack.figures.get("rows_lost", 0) + lost)
        assert not problems, f"{len(problems)} problems of {checked} rows, e.g. {problems[:5]}"
        assert_registered(stack.settings, SPEC, snap, SCALE.recover_s)
    answers, errors = run.queries.assert_in_time(mark)
    stack.assert_roles_alive()
    assert run.ingest.failures == 0, f"{run.ingest.failures} ingest rounds failed for good"
    stack.record(f"{name}.fresh_s", fresh)
    stack.record(f"{name}.answers", answers)
    stack.record(f"{name}.errors", errors)
    if outage_s is not None:
        stack.record(f"{name}.outage_s", outage_s)


def assert_said_not_ready(seen: dict[str, set[int]]) -> None:
    """Every role answered /readyz during the outage, and said it was not ready."""
    quiet = {role: sorted(codes) for role, codes in seen.items() if 503 not in codes or 0 in codes}
    assert not quiet, f"/readyz during the outage (503 wanted, 0: no answer): {quiet}"


def test_baseline_without_a_fault(fault):
    mark = len(fault.queries.outcomes)
    wait_until(lambda: fault.ingest.rounds >= 20, timeout=60, what="20 ingest rounds")
    check_after(fault, "baseline", time.monotonic(), mark)
    fault.stack.record("baseline.passed", 1)


def test_poison_messages_of_every_kind_reach_the_dead_letter_topic(fault):
    mark = len(fault.queries.outcomes)
    sent = send_poison(fault.stack.settings, SPEC.collection.topic, SPEC.dim, SCALE.poison,
                       SCALE.oversize)
    assert len(sent) == SCALE.poison
    check_after(fault, "poison", time.monotonic(), mark)
    letters = dead_letters(fault.stack.settings, SPEC.collection.dlq_topic)
    missing = sorted(set(sent) - set(letters))
    assert not missing, f"{len(missing)} poison messages not dead-lettered, e.g. {missing[:5]}"
    wrong = {pos: (kind, letters[pos]) for pos, kind in sent.items()
             if kind in POISON_REASONS and letters[pos] != POISON_REASONS[kind]}
    assert not wrong, f"dead letters with another reason: {list(wrong.items())[:5]}"
    assert all(letters[pos] for pos in sent), "a dead letter without a reason"
    fault.stack.record("poison.passed", 1)


def test_hostile_requests_get_an_error_or_an_answer(fault):
    mark = len(fault.queries.outcomes)
    conn = connect(fault.stack.settings.redis_url)
    try:
        report = send_hostile(conn, SPEC.name, SPEC.dim, SCALE.hostile)
        stream = protocol.queue_key(SPEC.name)
        wait_until(lambda: not any(conn.xrange(stream, e, e) for e in report.unaddressable),
                   timeout=60, what="requests without a usable id to leave the stream")
    finally:
        conn.close()
    fault.stack.record("hostile.searcher_peak_rss_mb", fault.stack.searcher.peak_rss_mb())
    fault.stack.record("hostile.requests", SCALE.hostile)
    assert set(report.outcomes) == set(HOSTILE_KINDS[:min(SCALE.hostile, len(HOSTILE_KINDS))])
    assert not report.problems, (f"{len(report.problems)} hostile requests went wrong, e.g. "
                                 f"{report.problems[:5]}; outcomes {report.outcomes}")
    check_after(fault, "hostile", time.monotonic(), mark)
    fault.stack.record("hostile.passed", 1)


# Each dependency is killed and restarted, then frozen past every timeout: (scenario, server, how).
OUTAGES = [("redis_killed", "redis", "kill"), ("redis_stopped", "redis", "freeze"),
           ("broker_killed", "kafka", "kill"), ("broker_stopped", "kafka", "freeze")]


@pytest.mark.parametrize(("name", "server", "how"), OUTAGES, ids=[o[0] for o in OUTAGES])
def test_a_dependency_outage_longer_than_every_timeout(fault, name, server, how):
    mark = len(fault.queries.outcomes)
    target = getattr(fault.stack, server)
    if how == "kill":
        seen = fault.stack.kill_and_restart(target, down_s=SCALE.outage_s)
    else:
        seen = fault.stack.freeze(target, SCALE.outage_s)
    check_after(fault, name, time.monotonic(), mark, SCALE.outage_s)
    assert_said_not_ready(seen)
    fault.stack.record(f"{name}.passed", 1)


def _fill(folder: Path) -> Path:
    """Write zeros into `folder` until its file system is full; the filler file."""
    filler = folder / "filler.bin"
    block = bytes(1 << 20)
    with open(filler, "wb") as out:
        try:
            while True:
                out.write(block)
                out.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
    return filler


def test_segment_store_disk_full(fault):
    mark = len(fault.queries.outcomes)
    filler = _fill(fault.stack.store)
    try:
        time.sleep(SCALE.outage_s)
        fault.stack.assert_roles_alive()
    finally:
        filler.unlink()
    check_after(fault, "disk_full", time.monotonic(), mark, SCALE.outage_s)
    fault.stack.record("disk_full.passed", 1)


def test_corrupt_and_deleted_segment_files(fault):
    stack, mark = fault.stack, len(fault.queries.outcomes)
    registry = Registry(stack.settings.redis_client(), SPEC.name)
    records = wait_until(lambda: len(registry.segments()) >= 2 and registry.segments(),
                         timeout=60, what="two registered segments")
    corrupt, deleted = records[0], records[-1]
    backup = stack.root / "backup"
    for rec in (corrupt, deleted):
        shutil.copytree(stack.store / rec.path, backup / rec.segment_id)
    target = stack.store / corrupt.path / "vectors.npy"
    data = bytearray(target.read_bytes())
    data[-8:] = bytes(b ^ 0xFF for b in data[-8:])
    target.write_bytes(bytes(data))
    (stack.store / deleted.path / "ids.npy").unlink()

    # A fresh searcher must load from the damaged folders: it refuses them and serves the
    # rows they hold from its tail.
    assert stack.searcher.stop() == 0, stack.searcher.tail()
    stack.start_searcher()
    stack.wait_ready()
    with fault.ingest.paused(SCALE.recover_s) as snap:
        wait_fresh(fault.client, SPEC.name, snap, SCALE.recover_s)
        checked, lost, problems = search_problems(fault.client, SPEC.name, snap)
        assert not problems, (f"with damaged segments: {len(problems)} problems of {checked} "
                              f"rows, e.g. {problems[:5]}")
    for rec in (corrupt, deleted):
        shutil.rmtree(stack.store / rec.path)
        shutil.copytree(backup / rec.segment_id, stack.store / rec.path)
    check_after(fault, "corrupt_segments", time.monotonic(), mark)
    fault.stack.record("corrupt_segments.passed", 1)
