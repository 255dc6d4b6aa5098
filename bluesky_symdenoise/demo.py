"""Beamline in a box: a live, denoised in situ scan on simulated hardware.

``bluesky-symdenoise demo --out DIR`` does, on loopback only:

1. starts the simulated beamline IOC (``sim_iocs.beamline``: area detector, furnace,
   shutter) with an in situ scene whose rings drift with temperature;
2. builds a RunEngine, an embedded Tiled catalog (``SimpleTiledServer(directory=DIR/catalog,
   readable_storage=[DIR/frames])`` + ``TiledWriter``),
   :class:`~bluesky_symdenoise.stream.callback.SymDenoise` (geometry from the PONI and mask
   files the IOC wrote) and the headless
   :class:`~bluesky_symdenoise.view.live.LiveDenoiseView` (PNG snapshots in ``DIR/snapshots``);
   by default the detector writes its frames to HDF5 files under ``DIR/frames`` through its
   areaDetector HDF5 plugin (events carry Datum ids; the plugin and the catalog read the
   files), and with ``inline=True`` the frames travel in the events themselves;
3. runs ``bp.list_scan([det], temperature, temps)``: the furnace ramps between points, each
   point is one short exposure (~``counts`` counts per pixel). The ramp rate is chosen so the
   scan outlasts the denoiser's fine-tuning budget: the first frames are served by the
   interim denoiser (the pre-trained base model), the later ones by the fine-tuned network;
4. prints a summary: PSNR of the raw and denoised frames against the noise-free truth, for
   interim- and network-served frames separately, the I(q) error, frames dropped, times.

The truth
---------
The IOC computes each frame as Poisson counts of ``SceneSource.expectation(T) *
counts_per_second * AcquireTime`` (``sim_iocs/scene_source.py``), ``T`` the furnace readback at
readout. The demo builds the same ``SceneSource`` (same scene, shape, seed, in situ change,
temperature range; the scene is deterministic in the seed) and evaluates that expectation at
the temperature recorded in each event (the furnace snaps to the setpoint on arrival, so it is
the temperature of the exposure). Hot, dead and masked pixels are excluded from PSNR and I(q).

The IOC is stopped on exit, on errors and on Ctrl-C (SIGINT) or SIGTERM.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

if TYPE_CHECKING:
    from event_model.documents import EventPage

__all__ = ["run_demo"]

#: Seconds per exposure: short, like a fast in situ series.
EXPOSURE_S = 0.1
TEMPERATURE_RANGE = (300.0, 600.0)
FIELD = "det_image"


class _FillFrames:
    """Hands the raw run to ``callbacks`` with its frames read from the detector's files.

    In file mode the RunEngine's events carry Datum ids; the summary and the live view want
    arrays. Each event is passed on as a copy holding its frame: row ``point_number`` of
    ``/entry/data/data`` in the ``AD_HDF5`` Resource's file. The IOC flushed it before the
    trigger completed, so the read finds it at once; it runs on the RunEngine's thread, as the
    demo's own bookkeeping (the denoiser fills its frames itself, with ``event_model.Filler``
    on its worker thread).

    The file is opened through a Python file object each time. HDF5 shares one open file
    (and its cached metadata) among all handles of a process: opened by name while the
    denoiser's handler holds it, the dataset would keep the length it had when that handler
    read it. A file object is a file of its own to HDF5, read afresh. A frame that cannot be
    read is recorded in ``errors`` (its event is then left out of the summary and the view),
    never raised into the RunEngine.
    """

    _WAITS_S = (0.02, 0.1, 0.3)  # a frame not readable yet: wait, then try again

    def __init__(self, field: str, callbacks: list) -> None:
        self.field = field
        self.callbacks = callbacks
        self.errors: list[str] = []
        self._files: dict[str, str] = {}  # resource uid -> AD_HDF5 file
        self._rows: dict[str, tuple[str, int]] = {}  # datum id -> (file, row)

    def __call__(self, name: str, doc: dict) -> None:
        if name == "event_page":
            import event_model

            for event in event_model.unpack_event_page(cast("EventPage", doc)):
                self("event", event)
            return
        if name == "resource" and doc.get("spec") == "AD_HDF5":
            self._files[doc["uid"]] = str(Path(doc["root"]) / doc["resource_path"])
        elif name == "datum" and doc["resource"] in self._files:
            self._rows[doc["datum_id"]] = (self._files[doc["resource"]],
                                           int(doc["datum_kwargs"]["point_number"]))
        elif name == "event" and isinstance(doc["data"].get(self.field), str):
            try:
                frame = self._read(*self._rows[doc["data"][self.field]])
            except Exception as exc:  # noqa: BLE001 - never raise into the RunEngine
                self.errors.append(f"raw frame {doc.get('seq_num')} could not be read: "
                                   f"{exc!r}")
                return
            doc = dict(doc, data={**doc["data"], self.field: frame},
                       filled={**doc.get("filled", {}), self.field: True})
        elif name == "stop":
            self._files.clear()
            self._rows.clear()
        for callback in self.callbacks:
            callback(name, doc)

    def _read(self, path: str, row: int) -> np.ndarray:
        for wait in self._WAITS_S:
            try:
                return self._read_once(path, row)
            except (OSError, KeyError, IndexError, ValueError):
                time.sleep(wait)
        return self._read_once(path, row)

    @staticmethod
    def _read_once(path: str, row: int) -> np.ndarray:
        import h5py

        with open(path, "rb") as handle, h5py.File(handle, "r") as h5:
            return np.asarray(h5["/entry/data/data"][row])


class _Collect:
    """Keeps what the summary needs from the raw (RunEngine) and derived (SymDenoise) runs."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.descriptors: dict[str, str] = {}
        self.raw: dict[int, dict] = {}        # seq_num -> {"frame", "temperature"}
        self.denoised: dict[int, dict] = {}   # raw_seq_num -> {"frame", "by", "t"}
        self.derived_start: dict | None = None
        self.derived_stop: dict | None = None
        self.summary: dict = {}
        self.raw_uid: str | None = None
        self.t0 = time.perf_counter()

    def __call__(self, name: str, doc: dict) -> None:
        with self.lock:
            if name == "start":
                if "original_run_uid" in doc:
                    self.derived_start = doc
                else:
                    self.raw_uid = doc["uid"]
            elif name == "descriptor":
                self.descriptors[doc["uid"]] = doc.get("name", "")
            elif name == "event":
                self._event(doc)
            elif name == "event_page":
                import event_model

                for event in event_model.unpack_event_page(cast("EventPage", doc)):
                    self._event(event)
            elif name == "stop" and self.derived_start is not None \
                    and doc.get("run_start") == self.derived_start["uid"]:
                self.derived_stop = doc

    def _event(self, doc: dict) -> None:
        stream = self.descriptors.get(doc["descriptor"])
        data = doc["data"]
        if stream == "primary" and FIELD in data:
            self.raw[doc["seq_num"]] = {"frame": np.asarray(data[FIELD], float),
                                        "temperature": float(data.get("temperature", np.nan))}
        elif stream == "denoised":
            self.denoised[int(data["raw_seq_num"])] = {
                "frame": np.asarray(data[f"{FIELD}_denoised"], float),
                "by": str(data[f"{FIELD}_denoised_by"]),
                "t": time.perf_counter() - self.t0}
        elif stream == "summary":
            self.summary = dict(data)


def _psnr(estimate: np.ndarray, truth: np.ndarray, valid: np.ndarray) -> float:
    mse = float(np.mean((estimate[valid] - truth[valid]) ** 2))
    return 10 * np.log10(float(truth[valid].max()) ** 2 / mse)


def _metrics(collect: _Collect, *, scene: str, size: int, seed: int, cps: float,
             poni: Path, mask_path: Path) -> dict[str, Any]:
    """PSNR and I(q) error of raw and denoised frames against the simulator's truth."""
    from sim_iocs.scene_source import SceneSource

    from .geometry import DetectorGeometry
    from .integrate.azimuthal import AzimuthalIntegration

    source = SceneSource(scene, shape=(size, size), seed=seed, counts_per_second=cps,
                         temperature_range=TEMPERATURE_RANGE)
    mask = np.load(mask_path)
    invalid = mask | source.defects.bad
    valid = ~invalid
    integ = AzimuthalIntegration(DetectorGeometry.from_poni(poni), invalid)
    npt = max(16, size // 2)
    rows = []
    for seq, raw in sorted(collect.raw.items()):
        den = collect.denoised.get(seq)
        if den is None:
            continue
        truth = source.expectation(raw["temperature"]) * cps * EXPOSURE_S
        iq_t = integ.integrate(truth, npt=npt).intensity
        keep = np.isfinite(iq_t) & (iq_t > 0)

        def iq_err(image, iq_t=iq_t, keep=keep):
            iq = integ.integrate(image, npt=npt).intensity
            return float(np.sqrt(np.mean((iq[keep] - iq_t[keep]) ** 2)) / np.mean(iq_t[keep]))

        rows.append({"seq": seq, "temperature": raw["temperature"], "by": den["by"],
                     "psnr_raw": _psnr(raw["frame"], truth, valid),
                     "psnr_den": _psnr(den["frame"], truth, valid),
                     "iq_raw": iq_err(raw["frame"]), "iq_den": iq_err(den["frame"]),
                     "t": den["t"]})
    return {"rows": rows, "mean_counts": float(np.mean(
        [source.expectation(r["temperature"])[valid].mean() * cps * EXPOSURE_S
         for r in rows])) if rows else float("nan")}


def _summary_table(rows: list[dict]) -> str:
    interim = [r for r in rows if not r["by"].startswith("network:") or "interim" in r["by"]]
    groups = [("interim (base model or classical)", interim),
              ("network (fine-tuned)", [r for r in rows if r["by"].startswith("network:")
                                        and "interim" not in r["by"]]),
              ("all frames", rows)]
    lines = ["| frames served by | n | PSNR raw dB | PSNR denoised dB | gain dB "
             "| I(q) err raw | I(q) err denoised |", "|---|---|---|---|---|---|---|"]
    for name, group in groups:
        if not group:
            lines.append(f"| {name} | 0 | — | — | — | — | — |")
            continue
        raw = np.mean([r["psnr_raw"] for r in group])
        den = np.mean([r["psnr_den"] for r in group])
        lines.append(f"| {name} | {len(group)} | {raw:.2f} | {den:.2f} | {den - raw:+.2f} | "
                     f"{100 * np.mean([r['iq_raw'] for r in group]):.2f} % | "
                     f"{100 * np.mean([r['iq_den'] for r in group]):.2f} % |")
    return "\n".join(lines)


def _check_catalog(client, raw_uid: str) -> dict[str, Any]:
    """Read the raw and the linked derived run back from the catalog.

    In file mode the raw frames are read from the HDF5 file (``AD_HDF5`` with one frame per
    point: Tiled gives ``(events, 1, rows, cols)``).
    """
    raw = client[raw_uid]
    raw_frames = raw["primary"][FIELD].read()
    derived_uid = next(key for key in client
                       if client[key].metadata["start"].get("original_run_uid") == raw_uid)
    derived = client[derived_uid]
    denoised = derived["denoised"][f"{FIELD}_denoised"].read()
    return {"raw_uid": raw_uid, "derived_uid": derived_uid,
            "raw_frames": list(raw_frames.shape), "denoised_frames": list(denoised.shape),
            "derived_exit_status": derived.metadata["stop"]["exit_status"]}


class _Terminated(Exception):
    pass


def run_demo(*, out: Path, scene: str = "insitu", frames: int = 24, counts: float = 1.0,
             budget_s: float = 30.0, size: int = 256, seed: int = 0,
             inline: bool = False) -> int:
    """Run the beamline-in-a-box demo; returns the exit code (0 on success, 130 on Ctrl-C).

    ``inline`` False (default): frames go through the detector's HDF5 file plugin into
    ``out/frames`` and reach the denoiser and the catalog by Resource/Datum; True: frames
    travel inline in the events.
    """
    began = time.perf_counter()
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    frames = max(int(frames), 2)
    cps = float(counts) / EXPOSURE_S
    # Ramp so the scan lasts about warm-up + 2 x budget: the network takes over mid-scan.
    step_s = max(0.5, (2.0 * float(budget_s) + 6.0) / frames)
    span = TEMPERATURE_RANGE[1] - TEMPERATURE_RANGE[0]
    ramp_rate = span / (frames - 1) / step_s
    temps = list(np.linspace(*TEMPERATURE_RANGE, frames))

    def on_sigterm(signum, frame):
        raise _Terminated()

    previous_sigterm = None
    if threading.current_thread() is threading.main_thread():
        previous_sigterm = signal.signal(signal.SIGTERM, on_sigterm)

    from .detector.launch import start_beamline_ioc

    print(f"demo: scene {scene}, {frames} frames of {size}x{size}, {EXPOSURE_S:g} s exposures "
          f"(~{counts:g} counts/pixel), {TEMPERATURE_RANGE[0]:g}->{TEMPERATURE_RANGE[1]:g} K "
          f"at {ramp_rate:.2f} K/s, fine-tuning budget {budget_s:g} s, seed {seed}; frames "
          + ("inline in events" if inline else f"through HDF5 files in {out / 'frames'}"),
          flush=True)
    ioc = None
    server = client = sd = view = None
    RE = None
    rc = 1
    try:
        ioc = start_beamline_ioc(scene=scene, shape=size, seed=seed, counts_per_second=cps,
                                 insitu_change="ring_drift",
                                 temperature_range=TEMPERATURE_RANGE, ramp_rate=ramp_rate,
                                 poni_dir=out / "calibration")
        print(f"IOC up: prefix {ioc.prefix} on {ioc.ca_address} "
              f"({time.perf_counter() - began:.1f} s)", flush=True)

        import bluesky.plans as bp
        from bluesky import RunEngine
        from bluesky.utils import RunEngineInterrupted
        from bluesky_tiled_plugins import TiledWriter
        from tiled.client import from_uri
        from tiled.server import SimpleTiledServer

        from .detector.devices import make_beamline_devices
        from .stream.callback import SymDenoise
        from .view.live import LiveDenoiseView

        frames_dir = None if inline else out / "frames"
        det, temperature, shutter = make_beamline_devices(ioc.prefix, frames_dir=frames_dir)
        det.cam.acquire_time.put(EXPOSURE_S, wait=True)
        if not shutter.is_open:
            shutter.open().wait(10)

        server = SimpleTiledServer(directory=out / "catalog",
                                   readable_storage=None if frames_dir is None
                                   else [frames_dir])
        client = from_uri(server.uri)
        writer = TiledWriter(client)
        collect = _Collect()
        view = LiveDenoiseView(field=FIELD, out_dir=out / "snapshots",
                               every=max(4, frames // 3))
        sd = SymDenoise(FIELD, poni=ioc.poni_path, mask=ioc.mask_path, budget_s=budget_s)
        for callback in (writer, view, collect):
            sd.subscribe(callback)
        # No bluesky SIGINT handler (a first Ctrl-C would only request a deferred pause):
        # Ctrl-C raises KeyboardInterrupt here; the scan is aborted and the IOC stopped.
        RE = RunEngine({}, context_managers=[])
        fill = _FillFrames(FIELD, [view, collect])
        for callback in (writer, sd) + ((view, collect) if inline else (fill,)):
            RE.subscribe(callback)

        scan_began = time.perf_counter()
        collect.t0 = scan_began
        try:
            # bluesky's hints name only the (motor, positions) tuple form of list_scan.
            plan = bp.list_scan([det], temperature, temps)  # type: ignore[arg-type]
            (raw_uid,) = cast("tuple[str, ...]", RE(plan, purpose="symdenoise demo",
                                                    poni=str(ioc.poni_path),
                                                    mask=str(ioc.mask_path)))
        except RunEngineInterrupted:
            raise KeyboardInterrupt from None
        scan_s = time.perf_counter() - scan_began
        print(f"scan done: {len(collect.raw)} frames in {scan_s:.1f} s; waiting for the "
              "denoiser", flush=True)
        if not sd.flush(timeout=180):
            print("warning: the denoiser did not finish within 180 s", flush=True)
        sd.close(timeout=60)
        drained_s = time.perf_counter() - scan_began

        snapshot = view.snapshot(out / "snapshots" / "live_view.png")
        if ioc.poni_path is None or ioc.mask_path is None:
            raise RuntimeError("the simulated beamline wrote no PONI or mask file")
        metrics = _metrics(collect, scene=scene, size=size, seed=seed, cps=cps,
                           poni=ioc.poni_path, mask_path=ioc.mask_path)
        catalog = _check_catalog(client, raw_uid)
        rows = metrics["rows"]
        table = _summary_table(rows)
        network_rows = [r for r in rows if r["by"].startswith("network:")
                        and "interim" not in r["by"]]
        summary = {
            "scene": scene, "frames": frames, "size": size, "seed": seed,
            "frames_via": "inline" if inline else "hdf5",
            "exposure_s": EXPOSURE_S, "mean_counts_per_pixel": metrics["mean_counts"],
            "budget_s": budget_s, "method": (collect.derived_start or {}).get(
                "symdenoise", {}).get("method"),
            "frames_dropped": int(sd.dropped),
            "first_network_frame": network_rows[0]["seq"] if network_rows else None,
            "first_network_frame_at_s": network_rows[0]["t"] if network_rows else None,
            "scan_s": scan_s, "scan_and_denoise_s": drained_s,
            "wall_s": time.perf_counter() - began,
            "denoised_by": sorted({r["by"] for r in rows}),
            "catalog": catalog,
            "errors": list(sd.errors) + list(view.errors) + list(fill.errors),
            "per_frame": rows}
        print()
        print(table)
        print()
        print(f"mean counts/pixel {summary['mean_counts_per_pixel']:.2f}; method "
              f"{summary['method']}; served by {', '.join(summary['denoised_by'])}")
        if network_rows:
            print(f"network took over at frame {summary['first_network_frame']} "
                  f"({summary['first_network_frame_at_s']:.1f} s into the scan)")
        else:
            print("the network did not take over during this scan (all frames interim)")
        print(f"frames dropped {summary['frames_dropped']}; scan {scan_s:.1f} s, scan + "
              f"denoising {drained_s:.1f} s, total {summary['wall_s']:.1f} s")
        print(f"catalog {out / 'catalog'}: raw run {catalog['raw_uid'][:8]} "
              f"{catalog['raw_frames']}, derived run {catalog['derived_uid'][:8]} "
              f"{catalog['denoised_frames']} ({catalog['derived_exit_status']})")
        pngs = sorted((out / "snapshots").glob("*.png"))
        print(f"snapshots: {len(pngs)} PNG in {out / 'snapshots'}"
              + (f" (latest: {snapshot.name})" if snapshot else ""))
        if summary["errors"]:
            print(f"warnings: {summary['errors'][:5]}")
        (out / "summary.md").write_text(table + "\n")
        (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
        rc = 0
    except (KeyboardInterrupt, _Terminated):
        print("\ninterrupted: stopping", file=sys.stderr, flush=True)
        if RE is not None and RE.state != "idle":
            try:
                RE.abort("interrupted")
            except Exception:  # noqa: BLE001
                pass
        rc = 130
    finally:
        if sd is not None:
            sd.close(timeout=10)
        if client is not None:
            try:
                client.context.close()
            except Exception:  # noqa: BLE001
                pass
        if server is not None:
            try:
                server.close()
            except Exception:  # noqa: BLE001
                pass
        if ioc is not None:
            ioc.stop()
        if previous_sigterm is not None:
            signal.signal(signal.SIGTERM, previous_sigterm)
    return rc
