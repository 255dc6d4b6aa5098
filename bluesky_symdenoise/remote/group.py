"""A group of ``serve`` workers on NATS JetStream sharing the raw runs: ``serve --group NAME``.

Everything that coordinates the members is JetStream's own machinery; no member talks to
another.

* **Who takes a run.** The raw runs' start documents (``<subject>.start``) are read through
  one *durable pull consumer* per group, ``symdenoise_<group>``, with explicit acks: JetStream
  hands each start to one member. A member fetches a start only when it is free, so it
  denoises one run at a time and never hoards runs another member could take.
* **Reading the run.** The member then reads that run's documents from the stream, in
  order, from the start's sequence, through an ephemeral pull consumer, keeping the messages
  whose ``run_id`` header (set by bluesky-nats on every document) is the run's uid. It pulls
  a few messages at a time, so the backlog stays in JetStream and the member's memory is
  bounded by its frame queue (``--max-queue``) and one fetch batch. Runs of several
  detectors publishing at once are each read in their own order.
* **Ownership.** A key-value bucket ``symdenoise_<group>`` holds one record per raw run:
  the member that owns it, its state (``running``, ``done``, ``failed``, ``released``), the
  uid of the derived run it publishes, the takeovers so far. Every change is a
  compare-and-set on the record's revision, so two members can never both believe they own
  a run.
* **Heartbeat and takeover.** Every ``ack_wait / 3`` seconds the owner tells JetStream the
  start is still in progress and bumps its record. A member that dies (SIGKILL, power) stops
  both: ``ack_wait`` seconds after its last heartbeat, JetStream redelivers the start to
  another member, or to the same one restarted. The new owner takes the record over (a
  compare-and-set), closes the dead member's derived run with ``exit_status="fail"`` and the
  reason (unless it had already ended with ``success``: then the run is only marked done), and
  denoises the run again from its first document, losslessly: its frames are in the stream.
  So a run has exactly one derived run that ends in ``success``, covering every frame the
  member received; any other derived run of it ends in ``fail`` or ``abort`` with the reason.
  A member stopped cleanly (SIGTERM) closes its derived run with ``abort``, releases the run
  and hands the start back at once (``nak``): another member takes it over without waiting.
* **Giving up.** A run whose members keep dying (a poison run) is tried ``max_attempts``
  times; then its derived run is closed with ``fail`` and the record says ``failed``.
* **Live mode.** As in process: with ``lossless=False`` (default) a frame that finds the
  member's queue full is dropped and counted in the derived run (``frames_dropped``). A run
  taken over is read losslessly.

The stream must keep a run's messages until the run is denoised (the default, limits-based
retention with a ``max_age`` longer than a run plus a takeover): a takeover reads them again.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .worker import RemoteDenoiser

__all__ = ["Claim", "GroupMember", "GroupPublisher", "GroupSettings", "RunClaims",
           "serve_nats_group"]

logger = logging.getLogger(__name__)

_NAME = re.compile(r"^[A-Za-z0-9_-]+$")


@dataclass(frozen=True)
class GroupSettings:
    """How a worker group shares runs.

    Parameters
    ----------
    group
        The group's name (letters, digits, ``_``, ``-``): members with the same name share
        the runs; it names the durable consumer and the key-value bucket.
    ack_wait
        Seconds without a heartbeat after which JetStream hands a run to another member
        (the takeover delay). Set by the member that creates the group's consumer.
    max_attempts
        Deliveries of one run before the group gives it up (closed with ``fail``).
    idle_timeout
        Seconds without a document of a raw run that never stopped before its derived run
        is closed with ``fail``.
    fetch_batch
        Messages pulled at once while reading a run.
    """

    group: str
    ack_wait: float = 30.0
    max_attempts: int = 3
    idle_timeout: float = 3600.0
    fetch_batch: int = 8

    def __post_init__(self) -> None:
        if not _NAME.match(self.group):
            raise ValueError(f"--group {self.group!r}: use letters, digits, '_' and '-' only")
        if self.ack_wait < 1:
            raise ValueError(f"ack_wait must be at least 1 s, got {self.ack_wait}")

    @property
    def heartbeat(self) -> float:
        """Seconds between an owner's heartbeats."""
        return self.ack_wait / 3

    @property
    def resource_name(self) -> str:
        """Name of the group's durable consumer and key-value bucket."""
        return f"symdenoise_{self.group}"


class RunClaims:
    """The group's key-value bucket: one JSON record per raw run, changed by compare-and-set.

    Use :meth:`open` (it creates the bucket the first time).
    """

    def __init__(self, kv: Any) -> None:
        self._kv = kv

    @classmethod
    async def open(cls, js: Any, bucket: str) -> RunClaims:
        """The bucket ``bucket`` of the JetStream context ``js``, created if missing."""
        from nats.js.errors import BucketNotFoundError

        try:
            kv = await js.key_value(bucket)
        except BucketNotFoundError:
            kv = await js.create_key_value(bucket=bucket, history=1,
                                           description="bluesky-symdenoise run ownership")
        return cls(kv)

    @staticmethod
    def _key(raw_uid: str) -> str:
        return f"run.{raw_uid}"

    async def create(self, raw_uid: str, record: dict[str, Any]) -> int | None:
        """Record a new run; its revision, or None if the run has a record already."""
        from nats.js.errors import KeyWrongLastSequenceError

        try:
            return await self._kv.create(self._key(raw_uid), json.dumps(record).encode())
        except KeyWrongLastSequenceError:
            return None

    async def get(self, raw_uid: str) -> tuple[dict[str, Any], int] | None:
        """(record, revision), or None when the run has no record."""
        from nats.js.errors import KeyNotFoundError

        try:
            entry = await self._kv.get(self._key(raw_uid))
        except KeyNotFoundError:
            return None
        return json.loads(entry.value), entry.revision

    async def update(self, raw_uid: str, record: dict[str, Any], revision: int) -> int | None:
        """Replace the record if it is still at ``revision``; the new revision, or None when
        another member changed it (the run is not ours any more)."""
        from nats.js.errors import KeyWrongLastSequenceError

        try:
            return await self._kv.update(self._key(raw_uid), json.dumps(record).encode(),
                                         last=revision)
        except KeyWrongLastSequenceError:
            return None


class Claim:
    """This member's hold on one run: its record, revision, and whether it is lost."""

    def __init__(self, claims: RunClaims, raw_uid: str, record: dict[str, Any],
                 revision: int) -> None:
        self.claims = claims
        self.raw_uid = raw_uid
        self.record = record
        self.revision = revision
        self.lost = asyncio.Event()
        self._lock = asyncio.Lock()

    async def save(self, **changes: Any) -> bool:
        """Compare-and-set the record with ``changes``; False (and :attr:`lost` set) when
        another member has taken the run."""
        async with self._lock:
            if self.lost.is_set():
                return False
            record = {**self.record, **changes, "updated": time.time()}
            revision = await self.claims.update(self.raw_uid, record, self.revision)
            if revision is None:
                self.lost.set()
                logger.warning("run %s was taken over by another member", self.raw_uid)
                return False
            self.record, self.revision = record, revision
            return True


class GroupPublisher:
    """Sends derived documents to NATS for a group member.

    Before a derived run's start goes out its uid is written into the run's record, and
    before its stop goes out the member checks it still owns the run: a member that lost a
    run publishes nothing more of it (the new owner closes it).
    """

    def __init__(self, publish: Callable[[str, dict], Any],
                 confirm: Callable[[str, dict], bool] | None = None) -> None:
        self._publish = publish
        #: ``confirm(name, doc)``: the member's check before a start or stop goes out
        #: (:meth:`GroupMember.confirm`); None: every document goes out.
        self.confirm = confirm
        self.muted = False
        #: Derived documents not sent because the run had been taken over.
        self.withheld = 0

    def __call__(self, name: str, doc: dict) -> None:
        if (not self.muted and name in ("start", "stop") and self.confirm is not None
                and not self.confirm(name, doc)):
            self.muted = True
        if self.muted:
            self.withheld += 1
            return
        self._publish(name, doc)


class GroupMember:
    """One member of a worker group: takes runs from JetStream and denoises them.

    Parameters
    ----------
    js
        The member's JetStream context (its own connection, on the running event loop).
    claims
        The group's :class:`RunClaims`.
    worker
        The :class:`RemoteDenoiser` whose derived documents go to ``publisher``.
    publisher
        The :class:`GroupPublisher` ``worker`` publishes through.
    send
        ``send(name, doc)``: publish a document directly (a crashed member's derived stop).
    settings
        The group's :class:`GroupSettings`.
    subject, derived_subject, stream
        As for :func:`serve_nats_group`.
    lossless
        Read live runs losslessly (runs taken over always are).
    """

    def __init__(self, js: Any, claims: RunClaims, worker: RemoteDenoiser,
                 publisher: GroupPublisher, send: Callable[[str, dict], Any],
                 settings: GroupSettings, *, subject: str, derived_subject: str,
                 stream: str, lossless: bool = False) -> None:
        self.js = js
        self.claims = claims
        self.worker = worker
        self.publisher = publisher
        self.send = send
        self.settings = settings
        self.subject = subject
        self.derived_subject = derived_subject
        self.stream = stream
        self.lossless = lossless
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        self.loop: asyncio.AbstractEventLoop | None = None
        self._claim: Claim | None = None
        #: Runs this member took, completed, took over from another member, gave up.
        self.counts = {"taken": 0, "completed": 0, "taken_over": 0, "failed": 0,
                       "released": 0}

    # -- called on the denoiser's thread, before a derived start or stop goes out --------
    def confirm(self, name: str, doc: dict) -> bool:
        """Write a derived run's uid into its raw run's record (``start``) or check the run
        is still ours (``stop``); False when it is not."""
        claim, loop = self._claim, self.loop
        if claim is None or loop is None:
            return True
        if name == "start":
            if doc.get("original_run_uid") != claim.raw_uid:
                return True
            change = claim.save(derived_uid=doc["uid"])
        else:
            change = claim.save()
        try:
            return asyncio.run_coroutine_threadsafe(change, loop).result(
                self.settings.ack_wait)
        except Exception as exc:  # noqa: BLE001 - an unreachable server: keep the doc
            logger.error("could not update the claim of run %s: %r", claim.raw_uid, exc)
            return True

    # -- the event loop ------------------------------------------------------------------
    async def run(self, stopping: asyncio.Event, ready: Callable[[], Any] | None = None) -> None:
        """Take runs until ``stopping`` is set."""
        from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

        self.loop = asyncio.get_running_loop()
        config = ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, ack_wait=self.settings.ack_wait,
                                deliver_policy=DeliverPolicy.NEW, max_ack_pending=-1)
        starts = await self.js.pull_subscribe(f"{self.subject}.start",
                                              durable=self.settings.resource_name,
                                              stream=self.stream, config=config)
        logger.info("member %s of group %s: waiting for runs (ack wait %.0f s)", self.name,
                    self.settings.group, self.settings.ack_wait)
        if ready is not None:
            ready()
        try:
            while not stopping.is_set():
                try:
                    messages = await starts.fetch(1, timeout=1.0)
                except TimeoutError:
                    # No messages: nats-py raises its own TimeoutError, or a bare
                    # asyncio.TimeoutError (the builtin one, which its own subclasses) when
                    # the deadline passes between its two pull requests.
                    continue
                for message in messages:
                    await self._take(message, stopping)
        finally:
            await starts.unsubscribe()

    async def _take(self, message: Any, stopping: asyncio.Event) -> None:
        from ormsgpack import unpackb

        start = unpackb(message.data)
        if "original_run_uid" in start:  # a derived run's start: not ours to denoise
            await message.ack()
            return
        raw_uid = start["uid"]
        attempt = message.metadata.num_delivered
        record = {"state": "running", "worker": self.name, "group": self.settings.group,
                  "raw_seq": message.metadata.sequence.stream, "derived_uid": None,
                  "attempt": attempt, "takeovers": 0, "updated": time.time()}
        revision = await self.claims.create(raw_uid, record)
        previous = None
        if revision is None:
            found = await self.claims.get(raw_uid)
            if found is None:  # deleted meanwhile: try again later
                await message.nak(delay=1)
                return
            previous, previous_revision = found
            if previous["state"] in ("done", "failed"):
                await message.ack()
                return
            record["takeovers"] = previous.get("takeovers", 0) + 1
            record["taken_from"] = previous["worker"]
            record["raw_seq"] = previous.get("raw_seq", record["raw_seq"])
            revision = await self.claims.update(raw_uid, record, previous_revision)
            if revision is None:  # another member changed it first
                await message.nak(delay=self.settings.ack_wait)
                return
        claim = Claim(self.claims, raw_uid, record, revision)
        if previous is not None:
            if await self._settle_previous(claim, previous, attempt):
                await message.ack()
                return
        self._claim = claim
        self.counts["taken"] += 1
        self.publisher.muted = False
        self.worker.denoiser.lossless = self.lossless or previous is not None
        heartbeat = asyncio.create_task(self._heartbeat(message, claim))
        try:
            outcome = await self._read_run(raw_uid, record["raw_seq"], claim, stopping)
            await self._finish(message, claim, outcome)
        finally:
            heartbeat.cancel()
            self._claim = None

    async def _settle_previous(self, claim: Claim, previous: dict[str, Any],
                               attempt: int) -> bool:
        """A run another member held: close its derived run; True if nothing is left to do
        (it had completed, or the group gives the run up)."""
        derived = previous.get("derived_uid")
        stop = await self._find_stop(derived, previous["raw_seq"]) if derived else None
        if stop is not None and stop.get("exit_status") == "success":
            logger.info("run %s: member %s had completed it (derived run %s)",
                        claim.raw_uid, previous["worker"], derived)
            await claim.save(state="done", derived_uid=derived)
            return True
        give_up = attempt > self.settings.max_attempts
        why = (f"member {previous['worker']} of group {self.settings.group} stopped "
               f"({previous['state']}) before finishing the raw run")
        if derived and stop is None:
            reason = (f"{why}; the group gave the run up after {attempt - 1} attempts"
                      if give_up else f"{why}; member {self.name} denoises it again")
            await self._close_derived(derived, reason)
        if give_up:
            logger.error("run %s: giving up after %d attempts", claim.raw_uid, attempt - 1)
            await claim.save(state="failed")
            self.counts["failed"] += 1
            return True
        logger.warning("run %s: taking it over from %s", claim.raw_uid, previous["worker"])
        self.counts["taken_over"] += 1
        return False

    async def _find_stop(self, derived_uid: str, from_seq: int) -> dict | None:
        """The stop document of the derived run ``derived_uid`` in the stream, if any."""
        from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
        from ormsgpack import unpackb

        config = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                                opt_start_seq=from_seq, ack_policy=AckPolicy.NONE,
                                inactive_threshold=30.0)
        sub = await self.js.pull_subscribe(f"{self.derived_subject}.stop", stream=self.stream,
                                           config=config)
        try:
            while True:
                try:
                    messages = await sub.fetch(64, timeout=1.0)
                except TimeoutError:
                    return None
                for message in messages:
                    if (message.headers or {}).get("run_id") == derived_uid:
                        return unpackb(message.data)
                if messages[-1].metadata.num_pending == 0:
                    return None
        finally:
            await self._drop(sub)

    async def _close_derived(self, derived_uid: str, reason: str) -> None:
        import event_model

        stop = event_model.compose_stop(start={"uid": derived_uid},  # type: ignore[typeddict-item]
                                        event_counters={}, poison_pill=[],
                                        exit_status="fail", reason=reason)
        logger.warning("closing derived run %s: %s", derived_uid, reason)
        await asyncio.get_running_loop().run_in_executor(None, self.send, "stop", dict(stop))

    async def _heartbeat(self, message: Any, claim: Claim) -> None:
        while not claim.lost.is_set():
            await asyncio.sleep(self.settings.heartbeat)
            try:
                await message.in_progress()
                await claim.save()
            except Exception as exc:  # noqa: BLE001 - a blip: the next beat tries again
                logger.warning("heartbeat of run %s failed: %r", claim.raw_uid, exc)

    async def _read_run(self, raw_uid: str, from_seq: int, claim: Claim,
                        stopping: asyncio.Event) -> str:
        """Feed the run's documents to the denoiser; how the reading ended: ``"stop"``,
        ``"lost"``, ``"stopping"`` or ``"idle"``."""
        from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
        from ormsgpack import unpackb

        loop = asyncio.get_running_loop()
        config = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                                opt_start_seq=from_seq, ack_policy=AckPolicy.NONE,
                                inactive_threshold=max(60.0, 2 * self.settings.ack_wait))
        sub = await self.js.pull_subscribe(f"{self.subject}.>", stream=self.stream,
                                           config=config)
        last_document = time.monotonic()
        try:
            while True:
                if claim.lost.is_set():
                    return "lost"
                if stopping.is_set():
                    return "stopping"
                try:
                    messages = await sub.fetch(self.settings.fetch_batch, timeout=1.0)
                except TimeoutError:
                    if time.monotonic() - last_document > self.settings.idle_timeout:
                        return "idle"
                    continue
                for message in messages:
                    if (message.headers or {}).get("run_id") != raw_uid:
                        continue
                    last_document = time.monotonic()
                    name = message.subject.rsplit(".", 1)[-1]
                    # A lossless put may wait for room: off the event loop, so heartbeats go on.
                    await loop.run_in_executor(None, self.worker, name, unpackb(message.data))
                    if name == "stop":
                        return "stop"
        finally:
            await self._drop(sub)

    async def _finish(self, message: Any, claim: Claim, outcome: str) -> None:
        loop = asyncio.get_running_loop()
        if outcome == "stop":
            await loop.run_in_executor(None, self.worker.denoiser.flush, None)
            if await claim.save(state="done"):
                await message.ack()
                self.counts["completed"] += 1
                logger.info("run %s: done (derived run %s)", claim.raw_uid,
                            claim.record.get("derived_uid"))
            return
        if outcome == "lost":  # the new owner closes our derived run; publish nothing more
            self.publisher.muted = True
            await loop.run_in_executor(None, self.worker.end_current_run,
                                       "run taken over by another member", "fail")
            return
        if outcome == "idle":
            reason = (f"the raw run sent nothing for {self.settings.idle_timeout:.0f} s and "
                      "never stopped")
            await loop.run_in_executor(None, self.worker.end_current_run, reason, "fail")
            await claim.save(state="failed")
            await message.ack()
            self.counts["failed"] += 1
            return
        # stopping: close our derived run ourselves, then hand the run back at once
        await loop.run_in_executor(
            None, self.worker.end_current_run,
            f"member {self.name} stopped before the raw run ended; the group takes it over")
        await claim.save(state="released")
        await message.nak()
        self.counts["released"] += 1

    async def _drop(self, sub: Any) -> None:
        """Remove an ephemeral consumer now rather than at its inactivity threshold."""
        try:
            info = await sub.consumer_info()
            await sub.unsubscribe()
            await self.js.delete_consumer(self.stream, info.name)
        except Exception as exc:  # noqa: BLE001 - it expires by itself anyway
            logger.debug("could not delete an ephemeral consumer: %r", exc)


def serve_nats_group(url: str, subject: str, settings: GroupSettings, *,
                     stream: str = "bluesky", derived_subject: str | None = None,
                     lossless: bool = False, ready: Callable[[], Any] | None = None,
                     **options: Any) -> int:
    """Serve as a member of a worker group until SIGINT/SIGTERM; 0 after a clean shutdown.

    ``url``, ``subject``, ``stream``, ``derived_subject``: as for
    :func:`~bluesky_symdenoise.remote.jetstream.serve_nats` (``stream`` must exist and hold
    ``<subject>.>``). ``settings``: the group (:class:`GroupSettings`). ``options`` go to
    :class:`~bluesky_symdenoise.remote.worker.RemoteDenoiser`. Main thread only.
    """
    import nats
    from bluesky_nats.nats_runtime import NatsRuntime

    from .jetstream import _size_checked_publisher, _stop_on_signals

    runtime = NatsRuntime("nats-io-symdenoise")
    loop = asyncio.new_event_loop()
    try:
        sender = _size_checked_publisher(runtime, url, derived_subject or subject)
        publisher = GroupPublisher(sender)  # confirms once the member exists
        worker = RemoteDenoiser(publisher, lossless=lossless, **options)
    except BaseException:
        runtime.close()
        loop.close()
        raise
    stopping, received = _stop_on_signals(loop)
    members: list[GroupMember] = []

    async def run() -> None:
        connection = await nats.connect(url)
        try:
            js = connection.jetstream()
            claims = await RunClaims.open(js, settings.resource_name)
            member = GroupMember(js, claims, worker, publisher, sender, settings,
                                 subject=subject, derived_subject=derived_subject or subject,
                                 stream=stream, lossless=lossless)
            publisher.confirm = member.confirm
            members.append(member)
            await member.run(stopping, ready)
        finally:
            await connection.close()

    logger.info("serving in group %s: %s %s.> -> symdenoise -> %s.>", settings.group, url,
                subject, derived_subject or subject)
    try:
        loop.run_until_complete(run())
    finally:
        loop.close()
        reason = received[0] if received else "group member ended"
        clean = worker.shutdown(reason)
        clean = sender.flush() and clean
        clean = runtime.close() and clean
    counts = members[0].counts if members else {}
    logger.info("stopped (%s); runs %s; %d frames dropped; %d derived documents withheld "
                "(run taken over), %d not sent (over max_payload)", reason, counts,
                worker.denoiser.dropped, publisher.withheld, sender.oversize)
    return 0 if clean else 1
