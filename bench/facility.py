"""Facility scale: one worker group on NATS JetStream under several detectors at once.

On this machine, everything on 127.0.0.1:

1. one nats-server (JetStream, its store in a temporary folder, ``max_payload: 8MB`` so a
   256x256 float64 frame travels inline) holding the stream ``bluesky`` on ``events.>``;
2. a worker group of ``--workers`` members, each a ``bluesky-symdenoise serve --nats URL
   --subject events.volatile --group facility --ack-wait S --budget B --device cpu``
   subprocess (live mode: a frame that finds a member's queue full is dropped and counted);
3. ``--detectors`` simulated detectors, each its own process: a real RunEngine publishing
   with bluesky-nats' ``NATSPublisher`` on ``events.volatile``, running ``--runs`` counts of
   ``--frames`` frames of an ophyd.sim ``DirectImage`` (the project's powder scene,
   ``--counts`` per pixel), ``--delay`` s between frames; detector *i* has frames of
   ``SIZES[i % 3]`` (64x64, 128x128, 256x256). They are started together (each waits for a
   "go" once it is connected) and publish concurrently;
4. with ``--kill`` (default), once the derived run of a detector's ``--kill-run``-th count
   (0-based; default the last, so the group first works under load with every member) has
   started and not stopped, the member owning it (the ``worker`` pid of the group's
   key-value record ``run.<raw uid>``) is killed with SIGKILL; the takeover time is measured
   from the kill to the new derived run's start (its ``time``) and to its stop (success);
5. once the detectors are done and every raw run has a derived run ended in ``success`` (or
   ``--timeout`` passed), the members' peak resident memory (``VmHWM``) is read, the whole
   stream is read once, and the members are stopped with SIGINT (exit code 0 expected).

Reported, per frame size and overall: runs published and denoised (a derived run whose stop
has ``exit_status="success"``), duplicates (raw runs with more than one success derived run),
derived runs closed with ``fail`` or ``abort`` (with their reasons), frames published vs
frames in the success derived runs' ``denoised`` stream, frames dropped (the derived run's
``summary`` stream, ``frames_dropped``), and the latency of each frame: the derived
``denoised`` event's ``time`` minus the raw event's ``time`` of the same ``seq_num``
(``raw_seq_num``), p50 / p95 / max. The run taken over is left out of the latencies and
reported on its own.

Timings only, no assertions; problems (a duplicate, a run not denoised, a member not exiting
0, errors in a member's log) are printed at the top of the result. ``bench/results/
facility.md`` came from:

    python -m bench.facility
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

HOST = "127.0.0.1"
SUBJECT = "events.volatile"
STREAM = "bluesky"
GROUP = "facility"
SIZES = (64, 128, 256)
RESULT_PREFIX = "RESULT "
#: Member log lines worth showing (the serve log has no level name).
NOTABLE = re.compile(r"error|exception|traceback|giving up|taking it over|taken over|closing|"
                     r"failed|could not|dropped \(|withheld", re.IGNORECASE)
#: Member log lines that are problems, not the group's normal takeover messages.
PROBLEM = re.compile(r"error|exception|traceback|giving up|heartbeat .* failed|could not",
                     re.IGNORECASE)


# -- subprocesses ------------------------------------------------------------------------------
class ChildProcess:
    """A subprocess whose merged stdout/stderr is collected line by line by a thread.

    Parameters
    ----------
    args
        The command line.
    stdin
        Open a pipe to the process's standard input (see :meth:`send_line`).
    """

    def __init__(self, args: list[str], *, stdin: bool = False) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        cwd = Path(__file__).resolve().parents[1]  # the worktree: its package first
        env["PYTHONPATH"] = os.pathsep.join(
            [str(cwd), *filter(None, [env.get("PYTHONPATH")])])
        self.args = args
        self.popen = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      stdin=subprocess.PIPE if stdin else None, text=True,
                                      env=env, cwd=cwd)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def pid(self) -> int:
        """The process id."""
        return self.popen.pid

    def wait_for_line(self, text: str, timeout: float) -> None:
        """Wait until a line of output contains ``text``; raise if the process exits first or
        ``timeout`` s pass."""
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.lines):
            if self.popen.poll() is not None:
                self._reader.join(5)
                if any(text in line for line in self.lines):
                    return
                raise RuntimeError(f"{shlex.join(self.args[:4])} exited "
                                   f"({self.popen.returncode}):\n" + "\n".join(self.lines))
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {text!r} from {shlex.join(self.args[:4])} "
                                   f"after {timeout} s")
            time.sleep(0.05)

    def send_line(self, text: str) -> None:
        """Write one line to the process's standard input."""
        assert self.popen.stdin is not None
        self.popen.stdin.write(text + "\n")
        self.popen.stdin.flush()

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the exit (and the last of the output); the exit code."""
        code = self.popen.wait(timeout)
        self._reader.join(5)
        return code

    def signal(self, signum: int, timeout: float = 60.0) -> int | None:
        """Send ``signum`` and wait for the exit; the exit code, None if still running."""
        if self.popen.poll() is None:
            self.popen.send_signal(signum)
        try:
            code = self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        self._reader.join(5)
        return code

    def stop(self) -> None:
        """Terminate the process if it still runs (then kill it after 10 s)."""
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)
        self._reader.join(5)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def port_open(port: int) -> bool:
    """True when something accepts connections on 127.0.0.1:``port``."""
    try:
        with socket.create_connection((HOST, port), timeout=0.2):
            return True
    except OSError:
        return False


def memory_of(pid: int) -> dict[str, float]:
    """Peak (``VmHWM``) and current (``VmRSS``) resident memory of ``pid`` in MB, from
    ``/proc/<pid>/status``; empty when the process is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    found = dict(re.findall(r"^(VmHWM|VmRSS):\s+(\d+) kB", text, re.MULTILINE))
    return {name: int(kb) / 1024 for name, kb in found.items()}


def start_nats_server(workdir: Path) -> tuple[ChildProcess, str]:
    """A nats-server with JetStream on a free port of 127.0.0.1 (store in ``workdir``,
    ``max_payload: 8MB``) holding the stream ``bluesky`` on ``events.>``: (process, URL)."""
    import nats

    exe = shutil.which("nats-server") or "/usr/sbin/nats-server"
    port = free_port()
    config = workdir / "nats.conf"
    config.write_text(f'listen: "{HOST}:{port}"\nmax_payload: 8MB\n'
                      f'jetstream {{\n  store_dir: "{workdir / "jetstream"}"\n}}\n')
    server = ChildProcess([exe, "-c", str(config)])
    deadline = time.monotonic() + 30
    while not port_open(port):
        if server.popen.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("nats-server did not start:\n" + "\n".join(server.lines))
        time.sleep(0.05)
    url = f"nats://{HOST}:{port}"

    async def add_stream() -> None:
        client = await nats.connect(url)
        try:
            await client.jetstream().add_stream(name=STREAM, subjects=["events.>"])
        finally:
            await client.close()

    asyncio.run(add_stream())
    return server, url


def start_member(url: str, *, budget: float, ack_wait: float) -> ChildProcess:
    """One ``serve --group`` member, returned once it says it is ready."""
    member = ChildProcess([sys.executable, "-m", "bluesky_symdenoise.cli", "serve",
                           "--nats", url, "--subject", SUBJECT, "--group", GROUP,
                           "--ack-wait", f"{ack_wait:g}", "--budget", f"{budget:g}",
                           "--device", "cpu"])
    member.wait_for_line("bluesky-symdenoise serve: ready", timeout=300)
    return member


# -- a detector (its own process) --------------------------------------------------------------
def run_detector(url: str, index: int, size: int, runs: int, frames: int, delay: float,
                 counts: float, seed: int) -> dict[str, Any]:
    """Publish ``runs`` counts of ``frames`` powder frames (``size`` x ``size``) from a
    RunEngine to NATS; waits for a ``go`` line on stdin once connected.

    Returns
    -------
    dict
        ``index``, ``size``, ``uids`` (the raw runs, in order), ``began`` and ``ended``
        (epoch seconds).
    """
    import nats
    from bluesky import RunEngine
    from bluesky import plans as bp
    from bluesky_nats.nats_publisher import NATSPublisher
    from bluesky_nats.nats_runtime import NatsRuntime
    from bluesky_nats.outbox import Delivery, Outbox
    from ophyd.sim import DirectImage

    from bluesky_symdenoise.simulate.scenes import make_scene

    runtime = NatsRuntime(f"nats-io-detector-{index}")
    try:
        client = runtime.connect(nats.connect(url))
        publisher = NATSPublisher(Outbox(runtime, client, delivery=Delivery.CRITICAL),
                                  client.jetstream(), SUBJECT)
        scene = make_scene("powder", shape=(size, size), seed=seed)
        rng = np.random.default_rng(seed)
        detector = DirectImage(func=lambda: scene.expose(counts, rng), name=f"det{index}")
        engine = RunEngine({})
        engine.subscribe(publisher)
        print(f"detector {index} ready", flush=True)
        sys.stdin.readline()  # "go"
        began, uids = time.time(), []
        for count in range(runs):
            (uid,) = engine(bp.count([detector], num=frames, delay=delay,
                                     md={"beam_center": list(scene.geometry.center),
                                         "facility_detector": index,
                                         "facility_count": count}))
            uids.append(uid)
        publisher.flush()
        return {"index": index, "size": size, "uids": uids, "began": began,
                "ended": time.time()}
    finally:
        runtime.close()


# -- watching the stream while it runs ---------------------------------------------------------
class StartStopWatcher:
    """Follows the start and stop documents in the stream (raw and derived), on a thread.

    Parameters
    ----------
    url
        The NATS server.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self.starts: dict[str, dict] = {}
        self.stops: dict[str, list[dict]] = defaultdict(list)
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._follow()),
                                        daemon=True)
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("could not follow the stream")

    async def _follow(self) -> None:
        import nats
        from ormsgpack import unpackb

        client = await nats.connect(self.url)

        async def on_start(message: Any) -> None:
            doc = unpackb(message.data)
            with self._lock:
                self.starts[doc["uid"]] = doc

        async def on_stop(message: Any) -> None:
            doc = unpackb(message.data)
            with self._lock:
                self.stops[doc["run_start"]].append(doc)

        js = client.jetstream()
        subs = [await js.subscribe(f"{SUBJECT}.start", stream=STREAM, cb=on_start,
                                   ordered_consumer=True),
                await js.subscribe(f"{SUBJECT}.stop", stream=STREAM, cb=on_stop,
                                   ordered_consumer=True)]
        self._ready.set()
        try:
            while not self._stopping.is_set():
                await asyncio.sleep(0.1)
        finally:
            for sub in subs:
                await sub.unsubscribe()
            await client.close()

    def derived_of(self, raw_uid: str) -> list[dict]:
        """The derived starts of ``raw_uid`` seen so far."""
        with self._lock:
            return [d for d in self.starts.values() if d.get("original_run_uid") == raw_uid]

    def stops_of(self, run_uid: str) -> list[dict]:
        """The stops of run ``run_uid`` seen so far."""
        with self._lock:
            return list(self.stops.get(run_uid, []))

    def start(self, uid: str) -> dict:
        """The start document of run ``uid`` (seen already)."""
        with self._lock:
            return self.starts[uid]

    def raw_uids(self) -> list[str]:
        """The raw runs started so far, in order."""
        with self._lock:
            return [u for u, d in self.starts.items() if "original_run_uid" not in d]

    def denoised(self, raw_uid: str) -> bool:
        """True once ``raw_uid`` has a derived run ended in success."""
        return any(stop.get("exit_status") == "success"
                   for start in self.derived_of(raw_uid) for stop in self.stops_of(start["uid"]))

    def close(self) -> None:
        """Stop following."""
        self._stopping.set()
        self._thread.join(10)


def read_claims(url: str, raw_uids: list[str]) -> dict[str, dict]:
    """The group's key-value records of ``raw_uids`` (those that exist)."""
    import nats
    from nats.js.errors import KeyNotFoundError

    async def read() -> dict[str, dict]:
        client = await nats.connect(url)
        try:
            kv = await client.jetstream().key_value(f"symdenoise_{GROUP}")
            records = {}
            for uid in raw_uids:
                try:
                    records[uid] = json.loads((await kv.get(f"run.{uid}")).value)
                except KeyNotFoundError:
                    pass
            return records
        finally:
            await client.close()

    return asyncio.run(read())


# -- reading the stream once at the end --------------------------------------------------------
@dataclass
class StreamContents:
    """What the bench needs of the stream, without the frames."""

    raw_starts: dict[str, dict] = field(default_factory=dict)
    derived_starts: dict[str, dict] = field(default_factory=dict)
    #: descriptor uid -> (run uid, stream name)
    descriptors: dict[str, tuple[str, str]] = field(default_factory=dict)
    #: raw run uid -> {seq_num: event time}
    raw_events: dict[str, dict[int, float]] = field(default_factory=lambda: defaultdict(dict))
    #: derived run uid -> [(raw_seq_num, event time)] of its "denoised" stream
    denoised_events: dict[str, list[tuple[int, float]]] = field(
        default_factory=lambda: defaultdict(list))
    #: derived run uid -> frames_dropped (its "summary" stream, else its "denoised" events)
    dropped: dict[str, int] = field(default_factory=dict)
    #: run uid -> its stops
    stops: dict[str, list[dict]] = field(default_factory=lambda: defaultdict(list))
    messages: int = 0


def read_stream(url: str) -> StreamContents:
    """Read every message of the stream once (a pull consumer, a batch at a time)."""
    import nats
    import nats.errors
    from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
    from ormsgpack import unpackb

    contents = StreamContents()

    def take(name: str, doc: dict) -> None:
        if name == "start":
            (contents.derived_starts if "original_run_uid" in doc
             else contents.raw_starts)[doc["uid"]] = doc
        elif name == "descriptor":
            contents.descriptors[doc["uid"]] = (doc["run_start"], doc.get("name", "primary"))
        elif name == "stop":
            contents.stops[doc["run_start"]].append(doc)
        elif name == "event_page":
            import event_model

            for event in event_model.unpack_event_page(doc):
                take("event", dict(event))
        elif name == "event" and doc["descriptor"] in contents.descriptors:
            run, stream = contents.descriptors[doc["descriptor"]]
            data = doc["data"]
            if run in contents.raw_starts:
                contents.raw_events[run][int(doc["seq_num"])] = float(doc["time"])
            elif stream == "denoised":
                contents.denoised_events[run].append((int(data["raw_seq_num"]),
                                                      float(doc["time"])))
                if "frames_dropped" in data:
                    contents.dropped[run] = max(contents.dropped.get(run, 0),
                                                int(data["frames_dropped"]))
            elif stream == "summary" and "frames_dropped" in data:
                contents.dropped[run] = int(data["frames_dropped"])

    async def read() -> None:
        client = await nats.connect(url)
        try:
            js = client.jetstream()
            total = (await js.stream_info(STREAM)).state.messages
            config = ConsumerConfig(deliver_policy=DeliverPolicy.ALL,
                                    ack_policy=AckPolicy.NONE, inactive_threshold=60.0)
            sub = await js.pull_subscribe("events.>", stream=STREAM, config=config)
            while contents.messages < total:
                try:
                    messages = await sub.fetch(32, timeout=5.0)
                except nats.errors.TimeoutError:
                    break
                for message in messages:
                    contents.messages += 1
                    take(message.subject.rsplit(".", 1)[-1], unpackb(message.data))
            await sub.unsubscribe()
        finally:
            await client.close()

    asyncio.run(read())
    return contents


# -- the report ---------------------------------------------------------------------------------
@dataclass
class Takeover:
    """The member killed mid-run and what the group did about it."""

    raw_uid: str
    size: int
    member: str
    derived_uid: str
    killed_at: float
    peak_rss_mb: float | None


def _percentiles(values: list[float]) -> tuple[str, str, str]:
    if not values:
        return "", "", ""
    p50, p95 = np.percentile(values, [50, 95])
    return f"{p50:.3f}", f"{p95:.3f}", f"{max(values):.3f}"


def _dropped_of(contents: StreamContents, derived_uid: str) -> int:
    if derived_uid in contents.dropped:
        return contents.dropped[derived_uid]
    for stop in contents.stops.get(derived_uid, []):
        found = re.search(r"(\d+) frames dropped", stop.get("reason") or "")
        if found:
            return int(found.group(1))
    return 0


def analyse(contents: StreamContents, size_of: dict[str, int],
            takeover: Takeover | None) -> dict[str, Any]:
    """Per raw run: its success derived runs, other derived runs, frames, drops, latencies.

    Parameters
    ----------
    contents
        The stream, read by :func:`read_stream`.
    size_of
        Frame size (rows) of each raw run the detectors published.
    takeover
        The kill, if one happened (its raw run's latencies are kept apart).

    Returns
    -------
    dict
        ``runs`` (one dict per raw run), ``closed`` (derived runs closed with fail or abort:
        raw uid, size, exit status, reason), ``unclosed`` (derived runs without a stop),
        ``nested`` (derived runs of derived runs).
    """
    derived_by_raw: dict[str, list[str]] = defaultdict(list)
    for uid, start in contents.derived_starts.items():
        derived_by_raw[start["original_run_uid"]].append(uid)
    runs, closed, unclosed = [], [], []
    for raw_uid, size in size_of.items():
        success, latencies = [], []
        for derived_uid in derived_by_raw.get(raw_uid, []):
            stops = contents.stops.get(derived_uid, [])
            if not stops:
                unclosed.append(derived_uid)
            for stop in stops:
                if stop.get("exit_status") == "success":
                    success.append(derived_uid)
                else:
                    closed.append({"raw_uid": raw_uid, "size": size,
                                   "exit_status": stop.get("exit_status"),
                                   "reason": stop.get("reason", "")})
        raw_times = contents.raw_events.get(raw_uid, {})
        frames_denoised = dropped = 0
        for derived_uid in success:
            events = contents.denoised_events.get(derived_uid, [])
            frames_denoised += len(events)
            dropped += _dropped_of(contents, derived_uid)
            latencies += [t - raw_times[seq] for seq, t in events if seq in raw_times]
        runs.append({"raw_uid": raw_uid, "size": size, "published": raw_uid in
                     contents.raw_starts, "success": success,
                     "frames_published": len(raw_times), "frames_denoised": frames_denoised,
                     "dropped": dropped, "latencies": latencies,
                     "taken_over": takeover is not None and takeover.raw_uid == raw_uid})
    nested = [uid for uid, start in contents.derived_starts.items()
              if start["original_run_uid"] in contents.derived_starts]
    return {"runs": runs, "closed": closed, "unclosed": unclosed, "nested": nested}


def size_table(analysis: dict[str, Any]) -> str:
    """The Markdown table of runs, frames and latency per frame size and overall."""
    columns = ["frame size", "runs published", "runs denoised", "duplicates",
               "derived runs fail/abort", "frames published", "frames denoised",
               "frames dropped", "latency p50 (s)", "latency p95 (s)", "latency max (s)"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    sizes = sorted({run["size"] for run in analysis["runs"]})
    for size in [*sizes, None]:
        runs = [r for r in analysis["runs"] if size is None or r["size"] == size]
        closed = [c for c in analysis["closed"] if size is None or c["size"] == size]
        latencies = [x for r in runs if not r["taken_over"] for x in r["latencies"]]
        cells = [f"{size}x{size}" if size else "**all**",
                 sum(r["published"] for r in runs), sum(bool(r["success"]) for r in runs),
                 sum(len(r["success"]) > 1 for r in runs), len(closed),
                 sum(r["frames_published"] for r in runs),
                 sum(r["frames_denoised"] for r in runs), sum(r["dropped"] for r in runs),
                 *_percentiles(latencies)]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def takeover_section(takeover: Takeover | None, contents: StreamContents,
                     analysis: dict[str, Any], claims: dict[str, dict],
                     ack_wait: float) -> str:
    """The Markdown of the kill: what was killed, how long the group took to take over."""
    if takeover is None:
        return "No member was killed.\n"
    new = sorted((d for d in contents.derived_starts.values()
                  if d["original_run_uid"] == takeover.raw_uid
                  and d["uid"] != takeover.derived_uid), key=lambda d: d["time"])
    run = next(r for r in analysis["runs"] if r["raw_uid"] == takeover.raw_uid)
    record = claims.get(takeover.raw_uid, {})
    rows = [("killed (SIGKILL)", f"member {takeover.member} (peak RSS "
             f"{takeover.peak_rss_mb or float('nan'):.0f} MB), owner of raw run "
             f"{takeover.raw_uid[:8]} ({takeover.size}x{takeover.size}), derived run "
             f"{takeover.derived_uid[:8]}"),
            ("ack wait (takeover delay)", f"{ack_wait:g} s")]
    if new:
        success = [s for s in contents.stops.get(new[0]["uid"], [])
                   if s.get("exit_status") == "success"]
        owner = record.get("worker", "?")
        rows.append(("kill -> new derived run's start",
                     f"{new[0]['time'] - takeover.killed_at:.2f} s (by {owner})"))
        # Members take one run at a time: the new owner may have been busy with another run.
        before = [stop["time"] for uid, other in claims.items()
                  if uid != takeover.raw_uid and other.get("worker") == owner
                  for stop in contents.stops.get(other.get("derived_uid") or "", [])
                  if stop["time"] <= new[0]["time"]]
        if before and max(before) > takeover.killed_at:
            rows.append(("kill -> the new owner's previous run done (it was busy until then)",
                         f"{max(before) - takeover.killed_at:.2f} s"))
        rows.append(("kill -> its stop (success)",
                     f"{success[0]['time'] - takeover.killed_at:.2f} s" if success
                     else "never (no success stop)"))
    else:
        rows.append(("new derived run", "none (the run had completed, or was never taken "
                                        "over)"))
    rows.append(("takeovers in the run's record", str(record.get("takeovers", "?"))))
    rows.append(("frames published / denoised by the new run",
                 f"{run['frames_published']} / {run['frames_denoised']}"))
    p50, p95, worst = _percentiles(run["latencies"])
    rows.append(("that run's frame latency p50 / p95 / max (s)", f"{p50} / {p95} / {worst}"))
    return ("| quantity | value |\n|---|---|\n"
            + "\n".join(f"| {name} | {value} |" for name, value in rows) + "\n")


def member_table(members: list[dict[str, Any]]) -> str:
    """The Markdown table of the group's members: runs, memory, exit code."""
    lines = ["| member | runs done (key-value records) | runs (its stop line) | "
             "peak RSS VmHWM (MB) | RSS at end (MB) | exit code on SIGINT |",
             "|---|---|---|---|---|---|"]
    for member in members:
        hwm, rss = member.get("VmHWM"), member.get("VmRSS")
        lines.append(f"| {member['name']} | {member['done']} | {member.get('runs', '')} | "
                     f"{'' if hwm is None else f'{hwm:.0f}'} | "
                     f"{'' if rss is None else f'{rss:.0f}'} | {member['exit']} |")
    return "\n".join(lines)


# -- the bench ----------------------------------------------------------------------------------
def _find_victim(watcher: StartStopWatcher, url: str, members: list[ChildProcess],
                 size_of_start: Callable[[dict], int], count: int) -> Takeover | None:
    """Kill the member owning the first raw run, a detector's ``count``-th count, whose
    derived run has started and not stopped; None when there is no such run yet."""
    for raw_uid in watcher.raw_uids():
        if watcher.start(raw_uid).get("facility_count") != count:
            continue
        derived = [d for d in watcher.derived_of(raw_uid) if not watcher.stops_of(d["uid"])]
        if not derived:
            continue
        record = read_claims(url, [raw_uid]).get(raw_uid)
        if not record or record.get("state") != "running" \
                or record.get("derived_uid") != derived[0]["uid"]:
            continue
        pid = int(record["worker"].rsplit(":", 1)[-1])
        victim = next((m for m in members if m.pid == pid), None)
        if victim is None or victim.popen.poll() is not None:
            continue
        peak = memory_of(pid).get("VmHWM")
        victim.popen.send_signal(signal.SIGKILL)
        killed_at = time.time()
        victim.wait(30)
        return Takeover(raw_uid, size_of_start(watcher.start(raw_uid)), record["worker"],
                        derived[0]["uid"], killed_at, peak)
    return None


def run_bench(args: argparse.Namespace) -> str:
    """Run the whole bench; the Markdown result."""
    workdir = Path(tempfile.mkdtemp(prefix="facility_"))
    started: list[ChildProcess] = []
    watcher: StartStopWatcher | None = None
    try:
        load = os.getloadavg()
        server, url = start_nats_server(workdir)
        started.append(server)
        members = []
        for _ in range(args.workers):
            members.append(start_member(url, budget=args.budget, ack_wait=args.ack_wait))
            started.append(members[-1])
        watcher = StartStopWatcher(url)
        detectors = []
        for index in range(args.detectors):
            detector = ChildProcess(
                [sys.executable, "-m", "bench.facility", "_detector", "--url", url,
                 "--index", str(index), "--size", str(SIZES[index % len(SIZES)]),
                 "--runs", str(args.runs), "--frames", str(args.frames),
                 "--delay", str(args.delay), "--counts", str(args.counts),
                 "--seed", str(args.seed + index)], stdin=True)
            started.append(detector)
            detectors.append(detector)
        for index, detector in enumerate(detectors):
            detector.wait_for_line(f"detector {index} ready", timeout=300)
        began = time.time()
        for detector in detectors:
            detector.send_line("go")
        takeover = None

        def size_of_start(start: dict) -> int:
            return SIZES[int(start.get("facility_detector", 0)) % len(SIZES)]

        while any(d.popen.poll() is None for d in detectors):
            if args.kill and takeover is None:
                takeover = _find_victim(watcher, url, members, size_of_start,
                                        args.runs - 1 if args.kill_run is None else args.kill_run)
            time.sleep(0.2)
        published = []
        for detector in detectors:
            detector.wait()
            result = [line for line in detector.lines if line.startswith(RESULT_PREFIX)]
            if not result:
                raise RuntimeError("a detector failed:\n" + "\n".join(detector.lines))
            published.append(json.loads(result[-1][len(RESULT_PREFIX):]))
        size_of = {uid: p["size"] for p in published for uid in p["uids"]}
        detectors_done = time.time()
        deadline = time.monotonic() + args.timeout
        while time.monotonic() < deadline and not all(watcher.denoised(u) for u in size_of):
            time.sleep(0.5)
        all_done = time.time()
        watcher.close()
        claims = read_claims(url, list(size_of))
        alive = [m for m in members if m.popen.poll() is None]
        memory = {m.pid: memory_of(m.pid) for m in alive}
        contents = read_stream(url)
        member_rows = []
        done_by = Counter(r.get("worker") for r in claims.values() if r.get("state") == "done")
        for member in members:
            name = f"{socket.gethostname()}:{member.pid}"
            if member.popen.poll() is not None:
                killed = takeover is not None and takeover.member == name
                member_rows.append({
                    "name": name, "lines": member.lines, "done": done_by[name],
                    "exit": f"killed by the bench ({member.popen.returncode})" if killed
                    else f"died before SIGINT ({member.popen.returncode})",
                    "VmHWM": takeover.peak_rss_mb if killed else None})
                continue
            code = member.signal(signal.SIGINT)
            stop_line = next((line for line in reversed(member.lines)
                              if " stopped (" in line and "runs {" in line), "")
            found = re.search(r"runs (\{.*?\})", stop_line)
            runs = ast.literal_eval(found.group(1)) if found else {}
            member_rows.append({"name": name, "exit": code, "done": done_by[name],
                                **memory.get(member.pid, {}),
                                "runs": ", ".join(f"{k} {v}" for k, v in runs.items() if v),
                                "lines": member.lines})
        return report(args, load=load, began=began, detectors_done=detectors_done,
                      all_done=all_done, published=published, contents=contents,
                      claims=claims, takeover=takeover, members=member_rows, size_of=size_of)
    finally:
        if watcher is not None:
            watcher.close()
        for process in reversed(started):
            process.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def report(args: argparse.Namespace, *, load: tuple[float, float, float], began: float,
           detectors_done: float, all_done: float, published: list[dict],
           contents: StreamContents, claims: dict[str, dict], takeover: Takeover | None,
           members: list[dict[str, Any]], size_of: dict[str, int]) -> str:
    """The Markdown result (see the module docstring for what each figure is)."""
    analysis = analyse(contents, size_of, takeover)
    problems = []
    not_denoised = [r for r in analysis["runs"] if not r["success"]]
    duplicates = [r for r in analysis["runs"] if len(r["success"]) > 1]
    if duplicates:
        problems.append(f"{len(duplicates)} raw runs with more than one success derived run: "
                        + ", ".join(r["raw_uid"][:8] for r in duplicates))
    if not_denoised:
        problems.append(f"{len(not_denoised)} raw runs not denoised within {args.timeout:g} s: "
                        + ", ".join(r["raw_uid"][:8] for r in not_denoised))
    if analysis["unclosed"]:
        problems.append(f"{len(analysis['unclosed'])} derived runs without a stop")
    if analysis["nested"]:
        problems.append(f"{len(analysis['nested'])} derived runs of derived runs")
    short = [r for r in analysis["runs"] if r["success"]
             and r["frames_denoised"] + r["dropped"] != r["frames_published"]]
    if short:
        problems.append(f"{len(short)} runs whose denoised + dropped frames differ from the "
                        "frames published")
    for member in members:
        if member["exit"] != 0 and not str(member["exit"]).startswith("killed by the bench"):
            problems.append(f"member {member['name']}: exit {member['exit']}")
        bad = [line for line in member["lines"] if PROBLEM.search(line)]
        if bad:
            problems.append(f"member {member['name']} logged {len(bad)} error lines")
    command = " ".join(["python -m bench.facility", shlex.join(args.argv)]).strip()
    frames = sum(r["frames_published"] for r in analysis["runs"])
    text = [f"# Facility scale: a worker group under several detectors (`{command}`)", ""]
    if problems:
        text += ["**PROBLEMS:**", ""] + [f"- **{p}**" for p in problems] + [""]
    text += [
        f"Machine: {os.cpu_count()} CPU cores (load average {load[0]:.2f} at the start), "
        "one nats-server (JetStream, file store, `max_payload: 8MB`), everything on "
        "127.0.0.1.",
        f"Group: {args.workers} members `serve --group {GROUP} --ack-wait {args.ack_wait:g} "
        f"--budget {args.budget:g} --device cpu` (live mode, queue 64).",
        f"Detectors: {args.detectors} processes, each a RunEngine publishing with "
        f"`NATSPublisher` on `{SUBJECT}`, {args.runs} counts of {args.frames} frames, "
        f"{args.delay:g} s between frames, powder scene at {args.counts:g} counts/pixel, "
        "float64 frames: " + ", ".join(f"detector {p['index']} {p['size']}x{p['size']}"
                                       for p in published) + ".",
        f"Wall: detectors publishing {detectors_done - began:.1f} s; their start -> every run "
        f"denoised {all_done - began:.1f} s ({frames} frames, "
        f"{frames / max(all_done - began, 1e-9):.1f} frames/s through the group). "
        f"Stream: {contents.messages} messages.", "",
        "Latency: the derived `denoised` event's `time` minus the raw event's `time` (same "
        "seq_num), every frame of the success derived runs"
        + (", the run taken over left out (below)" if takeover else "") + ".", "",
        size_table(analysis), "", "## Takeover", "",
        takeover_section(takeover, contents, analysis, claims, args.ack_wait),
        "## Derived runs closed with fail or abort", ""]
    text += [f"- raw run {c['raw_uid'][:8]} ({c['size']}x{c['size']}): `{c['exit_status']}`: "
             f"{c['reason']}" for c in analysis["closed"]] or ["none"]
    text += ["", "## Members", "", member_table(members), "",
             "Member log lines about takeovers, drops and errors:", ""]
    notable = [f"    [{m['name']}] {line}" for m in members for line in m["lines"]
               if NOTABLE.search(line)]
    text += notable or ["    none"]
    return "\n".join(text) + "\n"


def _detector_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.facility _detector")
    parser.add_argument("--url", required=True)
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--size", type=int, required=True)
    parser.add_argument("--runs", type=int, required=True)
    parser.add_argument("--frames", type=int, required=True)
    parser.add_argument("--delay", type=float, required=True)
    parser.add_argument("--counts", type=float, required=True)
    parser.add_argument("--seed", type=int, required=True)
    args = parser.parse_args(argv)
    result = run_detector(args.url, args.index, args.size, args.runs, args.frames,
                          args.delay, args.counts, args.seed)
    print(RESULT_PREFIX + json.dumps(result), flush=True)


def main(argv: list[str] | None = None) -> str:
    """Parse the command line, run the bench, print and write the Markdown result."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["_detector"]:  # a detector's own process (hidden subcommand)
        _detector_main(argv[1:])
        return ""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2, help="members of the group")
    parser.add_argument("--detectors", type=int, default=3,
                        help=f"detector processes (frame sizes {SIZES} in turn)")
    parser.add_argument("--runs", type=int, default=2, help="counts per detector")
    parser.add_argument("--frames", type=int, default=20, help="frames per count")
    parser.add_argument("--delay", type=float, default=0.2, help="seconds between frames")
    parser.add_argument("--counts", type=float, default=2.0, help="counts per pixel")
    parser.add_argument("--budget", type=float, default=0.0,
                        help="members' fine-tuning seconds (0: classical fast mode)")
    parser.add_argument("--ack-wait", type=float, default=5.0,
                        help="seconds without a heartbeat before a run is taken over")
    parser.add_argument("--kill", action=argparse.BooleanOptionalAction, default=True,
                        help="SIGKILL the member owning a run mid-run")
    parser.add_argument("--kill-run", type=int, default=None, metavar="K",
                        help="kill during a detector's K-th count (0-based; default the last)")
    parser.add_argument("--timeout", type=float, default=300.0,
                        help="seconds to wait, after the detectors, for every run denoised")
    parser.add_argument("--seed", type=int, default=20261212)
    parser.add_argument("--out", type=Path, default=Path("bench/results/facility.md"),
                        help="write the Markdown result here")
    args = parser.parse_args(argv)
    args.argv = argv
    text = run_bench(args)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    return text


if __name__ == "__main__":
    main()
