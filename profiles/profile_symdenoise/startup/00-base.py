"""symdenoise profile, 00: RunEngine, plans, GUI or headless, BestEffortCallback.

Environment:
    SYMDENOISE_HEADLESS   1/0: force headless (Agg, PNG snapshots) or not; default: headless
                          when there is no DISPLAY / WAYLAND_DISPLAY (on macOS never).
                          Not headless: ``%matplotlib qt`` when a Qt binding is installed,
                          so the live view is a window that follows each scan.
"""

import os
import sys

import matplotlib

from bluesky_symdenoise.detector.loopback import pin_ca_to_loopback

# Channel Access stays on 127.0.0.1, before any CA client exists.
pin_ca_to_loopback()

_headless_env = os.environ.get("SYMDENOISE_HEADLESS")
if _headless_env is not None:
    SYMDENOISE_HEADLESS = _headless_env.strip().lower() not in ("0", "", "no", "false")
else:
    SYMDENOISE_HEADLESS = (sys.platform.startswith("linux")
                           and not (os.environ.get("DISPLAY")
                                    or os.environ.get("WAYLAND_DISPLAY")))
if SYMDENOISE_HEADLESS:
    matplotlib.use("Agg")
else:
    # The live view's window follows a scan while RE(...) runs only under Qt: bluesky runs
    # Qt's event loop while it waits, and IPython's Qt input hook keeps the window alive
    # between commands. ``%matplotlib qt`` is what a user would type.
    import importlib.util

    from IPython import get_ipython

    _shell = get_ipython()
    if _shell is not None and any(importlib.util.find_spec(name) for name in
                                  ("PyQt6", "PySide6", "PyQt5", "PySide2")):
        _shell.run_line_magic("matplotlib", "qt")
    else:
        print("symdenoise: no Qt binding (pip install 'bluesky-symdenoise[gui]'): the live "
              f"view uses backend {matplotlib.get_backend()!r} and updates between "
              "commands, not during a scan")

import bluesky.plan_stubs as bps  # noqa: E402, F401 - for the session
import bluesky.plans as bp  # noqa: E402, F401 - for the session
import bluesky.preprocessors as bpp  # noqa: E402, F401 - for the session
from bluesky import RunEngine  # noqa: E402
from bluesky.callbacks.best_effort import BestEffortCallback  # noqa: E402


def symdenoise_at_exit(func):
    """Run ``func`` at interpreter exit, before Python joins the remaining threads.

    ``atexit`` handlers run only after non-daemon threads (the denoiser's worker, the
    embedded Tiled server) have ended, so they could wait forever. ``threading``'s own exit
    hook (what ``concurrent.futures`` uses) runs first; handlers run last-registered first.
    """
    import atexit
    import threading

    register = getattr(threading, "_register_atexit", None)
    if register is None:
        atexit.register(func)
    else:
        register(func)
    return func


RE = RunEngine({})
bec = BestEffortCallback()
if SYMDENOISE_HEADLESS:
    bec.disable_plots()
RE.subscribe(bec)
