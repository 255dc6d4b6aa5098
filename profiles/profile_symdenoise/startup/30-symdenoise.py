"""symdenoise profile, 30: live denoising ``sd`` and the live view ``view``.

``sd`` (SymDenoise) takes the geometry from the PONI and mask files the IOC wrote (PVs
``det:PoniPath``, ``det:MaskPath``); derived runs go to the catalog. ``view``
(LiveDenoiseView) draws raw vs denoised and the I(q) waterfalls: a Qt window that follows
each scan (at most one redraw a second), or, headless, PNG files every 10 frames in
``SYMDENOISE_SNAPSHOTS`` (default ``<catalog>/../snapshots``).

Environment:
    SYMDENOISE_BUDGET     seconds of per-scan network fine-tuning (default 30)
"""

import os
from pathlib import Path

from bluesky_symdenoise.stream.callback import SymDenoise
from bluesky_symdenoise.view.live import LiveDenoiseView

sd = SymDenoise(f"{det.name}_image", poni=det.poni_path.get(),  # noqa: F821
                mask=det.mask_path.get(),  # noqa: F821
                budget_s=float(os.environ.get("SYMDENOISE_BUDGET", "30")))
sd.subscribe(tiled_writer)  # noqa: F821

SYMDENOISE_SNAPSHOTS = (Path(os.environ.get("SYMDENOISE_SNAPSHOTS")
                             or SYMDENOISE_CATALOG_DIR.parent / "snapshots")  # noqa: F821
                        if SYMDENOISE_HEADLESS else None)  # noqa: F821
view = LiveDenoiseView(f"{det.name}_image", out_dir=SYMDENOISE_SNAPSHOTS)  # noqa: F821
sd.subscribe(view)
RE.subscribe(view)  # noqa: F821
RE.subscribe(sd)  # noqa: F821


def _symdenoise_finish():
    """At exit: publish what is queued (derived stops included), then join the worker."""
    sd.flush(timeout=120)
    sd.close(timeout=30)


symdenoise_at_exit(_symdenoise_finish)  # noqa: F821 - runs first (LIFO)
print("symdenoise: RE, bp, bps, det, temperature, shutter, sd, view, catalog ready"
      + (f"; snapshots in {SYMDENOISE_SNAPSHOTS}" if SYMDENOISE_SNAPSHOTS else ""))
