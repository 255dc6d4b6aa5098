"""A scan with the live view in a Qt window, run as its own process (one backend per process).

``python -m tests.view.qt_scan SCENE OUT_DIR``: a real RunEngine, ``SymDenoise`` (classical
mode) and ``LiveDenoiseView()`` under matplotlib's QtAgg backend, subscribed as the shipped
profile does. Writes ``OUT_DIR/result.json`` (what the window did) and ``OUT_DIR/window.png``
(the canvas grabbed by Qt). Under Qt's ``offscreen`` platform there is no X display, so the
QApplication is made first (matplotlib then sees Qt running); under Xvfb matplotlib makes it.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

N_FRAMES = 12


def main(scene_kind: str, out: Path) -> None:
    if os.environ.get("QT_QPA_PLATFORM") == "offscreen":
        from PyQt5.QtWidgets import QApplication

        app = QApplication(["qt_scan"])  # noqa: F841 - kept alive for the process
    import matplotlib

    matplotlib.use("QtAgg")
    import matplotlib.pyplot as plt
    import numpy as np
    from bluesky import RunEngine
    from bluesky import plans as bp
    from ophyd.sim import DirectImage

    from bluesky_symdenoise.simulate.scenes import make_scene
    from bluesky_symdenoise.stream.callback import SymDenoise
    from bluesky_symdenoise.view.live import LiveDenoiseView

    scene = make_scene(scene_kind, shape=(128, 128), seed=3)
    rng = np.random.default_rng(0)
    det = DirectImage(func=lambda: scene.expose(2.0, rng).astype(np.float32), name="det")

    view = LiveDenoiseView(interval_s=0.3)  # as the profile: field from the derived run
    sd = SymDenoise(field="det_img", center=scene.geometry.center, mask=scene.mask,
                    budget_s=0, warmup_frames=2)
    RE = RunEngine({})
    times: dict[str, list[float]] = {"draw": [], "raw_stop": []}
    RE.subscribe(view)
    RE.subscribe(sd)
    sd.subscribe(view)
    RE.subscribe(lambda name, doc: times["raw_stop"].append(time.monotonic())
                 if name == "stop" else None)
    figure_at_start = view.figure
    figure_at_start.canvas.mpl_connect("draw_event",
                                       lambda event: times["draw"].append(time.monotonic()))
    began = time.monotonic()
    (uid,) = RE(bp.count([det], num=N_FRAMES, delay=0.3))
    flushed = sd.flush(timeout=60)
    # After RE returns, a script keeps the window alive with plt.pause (IPython's input hook
    # does it in a session): the derived documents still queued for the Qt thread arrive.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not view.finished():
        plt.pause(0.1)
    plt.pause(0.5)
    sd.close()
    figure = view.figure
    canvas = figure.canvas
    canvas.grab().save(str(out / "window.png"))
    violation = view.violation()
    region = scene.regions.get("one_sided_feature")
    result = {
        "scene": scene_kind, "uid": uid, "flushed": flushed,
        "scan_s": times["raw_stop"][0] - began,
        "figure_same": figure is figure_at_start,
        "fignums": plt.get_fignums(), "number": figure.number,
        "canvas": type(canvas).__name__, "canvas_module": type(canvas).__module__,
        "visible": bool(canvas.isVisible()),
        "draws_during_scan": sum(t < times["raw_stop"][0] for t in times["draw"]),
        "draws": len(times["draw"]), "view_draws": view.draws,
        "title": figure.texts[0].get_text() if figure.texts else "",
        "view_errors": view.errors, "sd_errors": sd.errors,
        "usable": int(scene.usable.sum()),
        "rejected_180": (int((violation & 1).astype(bool)[scene.usable].sum())
                         if violation is not None else None),
        "feature": int(region.sum()) if region is not None else None,
        "feature_marked": (float(((violation & 1).astype(bool) & region).sum() / region.sum())
                           if region is not None and violation is not None else None),
        "panel_text": _texts(figure),
    }
    (out / "result.json").write_text(json.dumps(result, indent=1))


def _texts(figure) -> list[str]:
    """The text panel's blocks, as drawn."""
    from matplotlib.offsetbox import TextArea

    return [area.get_text() for area in figure.findobj(TextArea)]


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
