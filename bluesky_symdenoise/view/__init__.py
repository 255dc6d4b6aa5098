"""Live views of a scan: raw beside denoised frames and I(q) waterfalls."""

from .live import LiveDenoiseView

__all__ = ["LiveDenoiseView"]
