"""bluesky-symdenoise: live self-supervised denoising of X-ray detector frames for Bluesky.

Public entry points:

* :func:`denoise` — denoise the frames of one scan in memory.
* :class:`ScanDenoiser`, :class:`DenoiseConfig` — the object API behind it.
* :class:`SymDenoise` — the live Bluesky callback: ``RE.subscribe(SymDenoise(...))``.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .denoise.api import denoise, denoise_scan
from .denoise.config import DenoiseConfig
from .denoise.engine import DenoiseResult, ScanDenoiser
from .denoise.preprocess import InputError
from .stream.callback import SymDenoise

__all__ = ["DenoiseConfig", "DenoiseResult", "InputError", "ScanDenoiser", "SymDenoise",
           "__version__", "denoise", "denoise_scan"]
