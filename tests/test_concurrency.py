"""Several offices allocating at once, and processes killed mid-allocation, on SQLite and
PostgreSQL: no duplicate, no lost or half-written allocation, a chain that verifies and
the same block balance as if the referrals had queued."""

from __future__ import annotations

import itertools
import multiprocessing
import os
import random
import signal
import time
from collections import defaultdict

from evalkit.enrolment import verify
from evalkit.keys import KeyRing
from evalkit.store import Store
from tests.pilots import enrol_worker, kill_target, make_pilot

SPAWN = multiprocessing.get_context("spawn")


def _block_balance_holds(entries, half_largest_block: int) -> bool:
    by_stratum = defaultdict(list)
    for e in entries:
        by_stratum[e.stratum].append(e.arm)
    for arms in by_stratum.values():
        diff = 0
        for arm in arms:
            diff += 1 if arm == "usual" else -1
            if abs(diff) > half_largest_block:
                return False
    return True


def test_four_processes_enrol_fifty_each_at_once(store, store_url, key_dir, tmp_path):
    pilot = make_pilot(store, KeyRing(key_dir), tmp_path / "ws", "hackney-keyworker", "conc")
    path = str(tmp_path / "ws" / "protocols" / "conc.yaml")
    barrier = SPAWN.Barrier(4)
    procs = [
        SPAWN.Process(
            target=enrol_worker, args=(store_url, str(key_dir), path, "conc", w, 50, barrier)
        )
        for w in range(4)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]

    entries = store.log_entries("conc")
    assert len(entries) == 200
    assert len({e.unit for e in entries}) == 200
    assert all(e.kind == "allocation" for e in entries)
    assert {e.created_by for e in entries} == {f"office-{w}" for w in range(4)}
    interleaved = sum(a.created_by != b.created_by for a, b in itertools.pairwise(entries))
    assert interleaved > 3  # the offices really did allocate at the same time
    assert _block_balance_holds(entries, 3)  # largest block 6
    v = verify(store, "conc", pilot.secret)
    assert v.ok and v.replayed == 200


def test_sigkill_at_random_moments_leaves_whole_allocations_only(
    store, store_url, key_dir, tmp_path
):
    pilot = make_pilot(store, KeyRing(key_dir), tmp_path / "ws", "hackney-keyworker", "kill")
    path = str(tmp_path / "ws" / "protocols" / "kill.yaml")
    rnd = random.Random(20261124)
    kills = 0
    for round_ in range(12):
        before = store.log_head("kill")[0]
        proc = SPAWN.Process(
            target=kill_target, args=(store_url, str(key_dir), path, "kill", round_ * 100_000)
        )
        proc.start()
        deadline = time.monotonic() + 60
        while store.log_head("kill")[0] == before and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(rnd.uniform(0.0, 0.3))
        os.kill(proc.pid, signal.SIGKILL)
        proc.join()
        kills += proc.exitcode == -signal.SIGKILL

        reopened = Store.open(store_url)
        count, head = reopened.log_head("kill")
        entries = reopened.log_entries("kill")
        assert len(entries) == count and count > before
        assert head == entries[-1].entry_hash
        assert all(e.arm and e.entry_hash and e.probabilities for e in entries)
        assert verify(reopened, "kill").ok
        reopened.close()
    assert kills == 12
    v = verify(store, "kill", pilot.secret)
    assert v.ok and v.replayed == store.log_head("kill")[0]
