"""bluesky-symdenoise: live self-supervised denoising of X-ray detector frames for Bluesky.

Public entry points:

* :func:`denoise` — denoise the frames of one scan in memory.
* :class:`ScanDenoiser`, :class:`DenoiseConfig` — the object API behind it.
* :class:`SymDenoise` — the live Bluesky callback: ``RE.subscribe(SymDenoise(...))``.

The names are resolved on first use (PEP 562), so ``import bluesky_symdenoise`` and the
command line's ``--help`` do not pay for importing torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["DenoiseConfig", "DenoiseResult", "DetectorNoise", "InputError", "ScanDenoiser",
           "SymDenoise", "__version__", "denoise", "denoise_scan"]

#: Public name -> the module that defines it (relative to this package).
_LAZY: dict[str, str] = {
    "denoise": ".denoise.api",
    "denoise_scan": ".denoise.api",
    "DenoiseConfig": ".denoise.config",
    "DetectorNoise": ".denoise.detector_noise",
    "DenoiseResult": ".denoise.engine",
    "ScanDenoiser": ".denoise.engine",
    "InputError": ".denoise.preprocess",
    "SymDenoise": ".stream.callback",
}

# Load the (empty) subpackage ``denoise`` now: loading it binds the subpackage to the name
# ``denoise`` here, which would hide the function. Bound once, unbound here, the name then
# resolves to the function, and later imports of ``denoise.*`` modules do not bind it again.
importlib.import_module(".denoise", __name__)
del globals()["denoise"]

if TYPE_CHECKING:
    from .denoise.api import denoise, denoise_scan
    from .denoise.config import DenoiseConfig
    from .denoise.detector_noise import DetectorNoise
    from .denoise.engine import DenoiseResult, ScanDenoiser
    from .denoise.preprocess import InputError
    from .stream.callback import SymDenoise


def __getattr__(name: str) -> Any:
    """Import a public name's module on first access and cache the name here."""
    try:
        module = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
