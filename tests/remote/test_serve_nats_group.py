"""``serve --nats URL --subject S --group NAME``: a worker group against a real nats-server.

Two members share the raw runs (each run denoised by exactly one member), and a member
killed with SIGKILL in the middle of a run has that run taken over by the group: one derived
run completed over every frame, the dead member's derived run closed with ``fail``."""

from __future__ import annotations

import asyncio
import json
import signal
import threading

import numpy as np
import pytest

from bluesky_symdenoise.simulate.scenes import make_scene

from .conftest import wait_for
from .test_serve_nats import SHAPE, SUBJECT, read_stream

pytest.importorskip("bluesky_nats")

GROUP = "beamline"
#: Frames a held run sends before it waits: more than a member's warm-up (4 frames), after
#: which the member starts its derived run.
HELD_AFTER = 5


def publish_run(url: str, frames: int, delay: float = 0.0, seed: int = 0,
                hold: threading.Event | None = None) -> str:
    """One count of ``frames`` powder frames from a RunEngine publishing to NATS; its uid.

    With ``hold``, the run waits after :data:`HELD_AFTER` frames until ``hold`` is set: a
    test acts on a member while the raw run is surely still open, not after it ended."""
    import nats
    from bluesky import RunEngine
    from bluesky import plan_stubs as bps
    from bluesky import plans as bp
    from bluesky_nats.nats_publisher import NATSPublisher
    from bluesky_nats.nats_runtime import NatsRuntime
    from bluesky_nats.outbox import Delivery, Outbox
    from ophyd.sim import DirectImage

    runtime = NatsRuntime(f"nats-io-test-{seed}")
    try:
        client = runtime.connect(nats.connect(url))
        publisher = NATSPublisher(Outbox(runtime, client, delivery=Delivery.CRITICAL),
                                  client.jetstream(), SUBJECT)
        scene = make_scene("powder", shape=SHAPE, seed=3 + seed)
        rng = np.random.default_rng(seed)
        engine = RunEngine({}, context_managers=[])  # also on a thread
        engine.subscribe(publisher)
        det = DirectImage(func=lambda: scene.expose(2.0, rng), name="det")
        shots = 0

        def shot(detectors):  # count()'s per_shot
            nonlocal shots
            shots += 1
            while hold is not None and shots == HELD_AFTER + 1 and not hold.is_set():
                yield from bps.sleep(0.1)
            return (yield from bps.trigger_and_read(detectors))

        (uid,) = engine(bp.count([det], num=frames, delay=delay, per_shot=shot))
        assert publisher.flush()
        return uid
    finally:
        runtime.close()


def derived_runs(docs: list[tuple[str, dict]], raw_uid: str) -> list[dict]:
    """The derived runs of ``raw_uid`` in the stream: start, stop (or None), events."""
    runs = []
    for start in [d for n, d in docs if n == "start" and d.get("original_run_uid") == raw_uid]:
        stops = [d for n, d in docs if n == "stop" and d["run_start"] == start["uid"]]
        denoised = {d["uid"] for n, d in docs if n == "descriptor"
                    and d["run_start"] == start["uid"] and d["name"] == "denoised"}
        events = [d for n, d in docs if n == "event" and d["descriptor"] in denoised]
        runs.append({"start": start, "stops": stops, "events": events})
    return runs


def claim_record(url: str, raw_uid: str) -> dict | None:
    """The group's ownership record of ``raw_uid`` (key-value bucket), or None."""
    import nats
    from nats.js.errors import KeyNotFoundError

    async def read() -> dict | None:
        client = await nats.connect(url)
        try:
            kv = await client.jetstream().key_value(f"symdenoise_{GROUP}")
            try:
                return json.loads((await kv.get(f"run.{raw_uid}")).value)
            except KeyNotFoundError:
                return None
        finally:
            await client.close()

    return asyncio.run(read())


def completed(url: str, raw_uids: list[str], frames: int):
    """(docs, runs by raw uid) once every raw run has a derived run ended in success."""
    docs = read_stream(url)
    runs = {uid: derived_runs(docs, uid) for uid in raw_uids}
    for uid in raw_uids:
        if not any(r["stops"] and r["stops"][0]["exit_status"] == "success"
                   for r in runs[uid]):
            return None
    return docs, runs


def run_with_its_owner(url: str, members: list, frames: int, hold: threading.Event):
    """Publish one slow run on a thread, held open after a few frames until ``hold`` is set;
    once a member has started its derived run, return (the publishing thread, its result
    list, raw uid, the run's record, the owning member)."""
    by_pid = {str(m.popen.pid): m for m in members}
    result: list[str] = []
    engine = threading.Thread(target=lambda: result.append(
        publish_run(url, frames, delay=0.5, hold=hold)), daemon=True)
    engine.start()

    def owner():
        docs = read_stream(url)
        starts = [d for n, d in docs if n == "start"]
        raw = [d for d in starts if "original_run_uid" not in d]
        if not raw or not [d for d in starts if d.get("original_run_uid") == raw[0]["uid"]]:
            return None
        record = claim_record(url, raw[0]["uid"])
        return (raw[0]["uid"], record) if record and record.get("derived_uid") else None

    try:
        raw_uid, record = wait_for(owner, 60, "a member to start the derived run",
                                   interval=0.2)
    except BaseException:
        hold.set()  # let the run end: its thread must not outlive the test
        raise
    return engine, result, raw_uid, record, by_pid[record["worker"].rsplit(":", 1)[-1]]


def test_two_members_share_runs_and_each_run_gets_one_derived_run(nats_server, serve):
    members = [serve("--nats", nats_server, "--subject", SUBJECT, "--group", GROUP)
               for _ in range(2)]
    uids: list[str] = []
    threads = [threading.Thread(target=lambda s=s: uids.append(publish_run(nats_server, 3,
                                                                            seed=s)))
               for s in range(3)]
    for thread in threads:  # three RunEngines publishing at once
        thread.start()
    for thread in threads:
        thread.join(120)
    assert len(uids) == 3

    docs, runs = wait_for(lambda: completed(nats_server, uids, 3), 120,
                          "a derived run of every raw run", interval=0.5)
    for uid in uids:
        assert len(runs[uid]) == 1, runs[uid]  # exactly one derived run per raw run
        (run,) = runs[uid]
        assert len(run["stops"]) == 1 and run["stops"][0]["exit_status"] == "success"
        assert len(run["events"]) == 3
        assert np.asarray(run["events"][0]["data"]["det_img_denoised"]).shape == SHAPE
        record = claim_record(nats_server, uid)
        assert record is not None and record["state"] == "done"
        assert record["derived_uid"] == run["start"]["uid"]
    # no derived run of a derived run
    derived = {d["uid"] for n, d in docs if n == "start" and "original_run_uid" in d}
    assert not [d for n, d in docs if n == "start" and d.get("original_run_uid") in derived]
    for member in members:
        assert member.signal(signal.SIGINT) == 0, member.output
        assert "waiting for runs" in member.output


def test_a_member_killed_mid_run_has_its_run_taken_over(nats_server, serve):
    frames = 10
    members = [serve("--nats", nats_server, "--subject", SUBJECT, "--group", GROUP,
                     "--ack-wait", "3") for _ in range(2)]
    hold = threading.Event()
    engine, result, raw_uid, record, victim = run_with_its_owner(nats_server, members, frames,
                                                                 hold)
    try:
        assert victim.signal(signal.SIGKILL) == -signal.SIGKILL
    finally:
        hold.set()  # the raw run goes on only after the kill
    engine.join(120)
    assert result == [raw_uid]

    docs, runs = wait_for(lambda: completed(nats_server, [raw_uid], frames), 120,
                          "the run completed by the group", interval=0.5)
    runs_of_raw = runs[raw_uid]
    succeeded = [r for r in runs_of_raw
                 if r["stops"] and r["stops"][0]["exit_status"] == "success"]
    assert len(succeeded) == 1  # never two derived runs presented as complete
    assert len(succeeded[0]["events"]) == frames  # every frame, though read after the kill
    dead = [r for r in runs_of_raw if r is not succeeded[0]]
    assert [r["start"]["uid"] for r in dead] == [record["derived_uid"]]
    (stop,) = dead[0]["stops"]  # closed by the member that took the run over
    assert stop["exit_status"] == "fail" and "stopped" in stop["reason"], stop
    final = claim_record(nats_server, raw_uid)
    assert final["state"] == "done" and final["takeovers"] == 1
    assert final["derived_uid"] == succeeded[0]["start"]["uid"]
    survivor = next(m for m in members if m is not victim)
    assert "taking it over" in survivor.output
    assert survivor.signal(signal.SIGINT) == 0, survivor.output


def test_a_member_stopped_cleanly_hands_its_run_over_at_once(nats_server, serve):
    """SIGTERM mid-run: the member closes its derived run (``abort``) and gives the run
    back at once, well before the ack wait (60 s here) would have expired."""
    import time

    frames = 10
    members = [serve("--nats", nats_server, "--subject", SUBJECT, "--group", GROUP,
                     "--ack-wait", "60") for _ in range(2)]
    hold = threading.Event()
    engine, result, raw_uid, record, leaving = run_with_its_owner(nats_server, members, frames,
                                                                  hold)
    try:
        assert leaving.signal(signal.SIGTERM) == 0, leaving.output
    finally:
        hold.set()  # the raw run goes on only once the member has left
    stopped_at = time.monotonic()
    engine.join(120)
    docs, runs = wait_for(lambda: completed(nats_server, [raw_uid], frames), 45,
                          "the run completed by the other member", interval=0.5)
    assert time.monotonic() - stopped_at < 45  # not the 60 s ack wait
    succeeded = [r for r in runs[raw_uid]
                 if r["stops"] and r["stops"][0]["exit_status"] == "success"]
    assert len(succeeded) == 1 and len(succeeded[0]["events"]) == frames
    (left,) = [r for r in runs[raw_uid] if r is not succeeded[0]]
    (stop,) = left["stops"]  # closed by the member that left, not twice
    assert stop["exit_status"] == "abort" and "the group takes it over" in stop["reason"]
    assert claim_record(nats_server, raw_uid)["takeovers"] == 1
    staying = next(m for m in members if m is not leaving)
    assert staying.signal(signal.SIGINT) == 0, staying.output


def test_a_run_whose_members_keep_dying_is_given_up_with_a_reason(nats_server):
    """The fourth delivery of a run whose holders all died: the group closes the last
    derived run with ``fail`` and why, marks the run ``failed``, and denoises it no more."""
    import nats

    from bluesky_symdenoise.remote.group import (
        Claim,
        GroupMember,
        GroupPublisher,
        GroupSettings,
        RunClaims,
    )
    from bluesky_symdenoise.remote.worker import RemoteDenoiser

    sent: list[tuple[str, dict]] = []

    def send(name: str, doc: dict) -> None:
        sent.append((name, doc))

    async def scenario() -> tuple[bool, dict]:
        client = await nats.connect(nats_server)
        worker = RemoteDenoiser(send, budget_s=0, device="cpu")
        try:
            js = client.jetstream()
            settings = GroupSettings(GROUP, ack_wait=3)
            claims = await RunClaims.open(js, settings.resource_name)
            previous = {"state": "running", "worker": "gpu-box-2:4242", "raw_seq": 1,
                        "derived_uid": "derived-of-the-poison-run", "attempt": 3,
                        "takeovers": 2}
            revision = await claims.create("poison-run", previous)
            assert revision is not None
            member = GroupMember(js, claims, worker, GroupPublisher(send, lambda n, d: True),
                                 send, settings, subject=SUBJECT, derived_subject=SUBJECT,
                                 stream="bluesky")
            claim = Claim(claims, "poison-run", {**previous, "takeovers": 3}, revision)
            finished = await member._settle_previous(claim, previous, attempt=4)
            record, _ = await claims.get("poison-run")
            return finished, record
        finally:
            worker.shutdown("test over")
            await client.close()

    finished, record = asyncio.run(scenario())
    assert finished and record["state"] == "failed"
    ((name, stop),) = sent
    assert name == "stop" and stop["run_start"] == "derived-of-the-poison-run"
    assert stop["exit_status"] == "fail"
    assert "gpu-box-2:4242" in stop["reason"] and "gave the run up after 3" in stop["reason"]
