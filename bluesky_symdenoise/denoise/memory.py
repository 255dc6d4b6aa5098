"""How much memory a scan's denoising may take, and how the engine keeps within it.

The live plugin shares its process with the RunEngine: if the kernel killed that process
for memory, the acquisition would die with it. So every scan has a memory budget
(:attr:`~bluesky_symdenoise.DenoiseConfig.max_memory_gb`; default
:func:`default_memory_budget_gb`, 1.5 GB or a quarter of the memory available when the
plugin starts, whichever is less), and the engine keeps to it three ways:

1. what scales with the frame is held lean (ring profiles and partner plans of a large
   detector as compact per-pixel taps, :mod:`.symmetry`);
2. the network runs in tiles whose activations fit a share of the budget
   (:func:`inference_tile`; the tiles are exact, :mod:`.inference`);
3. :class:`MemoryGuard` samples the process's resident memory (RSS, not an estimate)
   before each stage: when its growth since the scan started, plus what the stages running
   now on other threads have reserved (:meth:`MemoryGuard.reserve`), plus the stage's own
   measured need, passes the budget, the stage does not run: fine-tuning is skipped, the
   held-out I(q) check is skipped, frames are passed through raw, each flagged with why
   (``docs/real_detectors.md``).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

__all__ = ["DEFAULT_MEMORY_CAP_GB", "HEADROOM", "INFERENCE_SHARE", "MemoryGuard",
           "default_memory_budget_gb",
           "device_tile", "inference_tile", "release_free_memory", "resident_bytes"]

#: The default budget never exceeds this (GB): what a 4 Mpx scan needs on a CPU with the
#: lean state and tiled inference (``bench/large_frames.py`` measures it).
DEFAULT_MEMORY_CAP_GB = 1.5
#: Share of the budget no stage may claim: what the stages' measured needs leave out
#: (pyFAI's integration transients, documents, the derived file's buffers).
HEADROOM = 0.15
#: Fraction of the memory available at start that the default budget may take.
DEFAULT_MEMORY_FRACTION = 0.25
#: Activation memory of one forward pass, bytes per pixel per unit of network width (about
#: 500 B/px at width 12 on a CPU, measured with ``predict_rates`` on 1 Mpx frames).
_ACTIVATION_BYTES_PER_PIXEL_PER_WIDTH = 45
#: Share of the budget that the network's activations may take at once: small enough that
#: a 1 Mpx frame still goes through the network beside the scan's state within the default
#: budget (``bench/large_frames.py``), large enough that the tiles' margins cost little.
INFERENCE_SHARE = 0.15
#: Smallest tile core (pixels a side): below it the margins cost more than the core.
_MIN_TILE = 128
_GB = 1 << 30


def resident_bytes() -> int:
    """This process's resident set size in bytes (what the kernel counts against it)."""
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except ImportError:  # pragma: no cover - psutil is a dependency
        with open(f"/proc/{os.getpid()}/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def release_free_memory() -> None:
    """Hand the C heap's free pages back to the system (glibc ``malloc_trim``; nothing
    elsewhere).

    Arrays of a few to 32 MB (a 1-4 Mpx frame) come from the heap once glibc has raised its
    mmap threshold, and their pages stay resident after they are freed: RSS would then count
    memory the scan no longer holds, and the guard would pass frames raw for nothing.
    """
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def _available_bytes() -> int | None:
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:  # pragma: no cover - psutil is a dependency
        return None


def default_memory_budget_gb() -> float:
    """The budget when none is given: :data:`DEFAULT_MEMORY_CAP_GB`, or a quarter of the
    memory available now if that is less."""
    available = _available_bytes()
    if available is None:
        return DEFAULT_MEMORY_CAP_GB
    return min(DEFAULT_MEMORY_CAP_GB, DEFAULT_MEMORY_FRACTION * available / _GB)


def inference_tile(budget_gb: float, width: int, *, multiple: int = 8) -> int:
    """Largest tile core (pixels a side) whose forward pass fits the inference share of a
    ``budget_gb`` budget for a network of ``width`` (its window adds the tile margin)."""
    from .inference import TILE_MARGIN

    window_pixels = INFERENCE_SHARE * budget_gb * _GB / (
        _ACTIVATION_BYTES_PER_PIXEL_PER_WIDTH * max(width, 1))
    side = int(window_pixels ** 0.5) - 2 * TILE_MARGIN
    return max(_MIN_TILE, side - side % multiple)


def device_tile(device: str, budget_gb: float, width: int, *,
                free_bytes: int | None = None) -> int:
    """The network's tile core on ``device`` (a ``torch.device`` type: ``"cpu"`` or
    ``"cuda"``): from the scan's budget on a CPU (the process's memory), from half the GPU
    memory free now on a GPU (``free_bytes``; default: ``torch.cuda.mem_get_info``), so a
    4 Mpx frame goes through a large GPU in one tile and through a small one in several.
    The out-of-memory fallback (:mod:`.device`) still halves batches if a tile does not fit.
    """
    if device != "cuda":
        return inference_tile(budget_gb, width)
    if free_bytes is None:
        import torch

        free_bytes, _ = torch.cuda.mem_get_info()
    return inference_tile(_GPU_FREE_SHARE * free_bytes / _GB / INFERENCE_SHARE, width)


#: Share of the GPU's free memory one forward pass's activations may take.
_GPU_FREE_SHARE = 0.5


@dataclass
class MemoryGuard:
    """Compares the process's resident memory now with what it was when the scan started.

    Parameters
    ----------
    budget_gb
        How much the resident memory may grow during the scan.

    Attributes
    ----------
    baseline
        Resident bytes when the guard was made (the scan's start).
    peak_growth
        The largest growth seen by :meth:`check`, in bytes.
    """

    budget_gb: float
    baseline: int = field(default_factory=resident_bytes)
    peak_growth: int = 0
    #: Bytes reserved by the stages running now (fine-tuning, serving, the I(q) check).
    reserved: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def budget_bytes(self) -> int:
        return int(self.budget_gb * _GB)

    def growth(self) -> int:
        """Resident bytes gained since the scan started (sampled now, after freed heap
        pages are handed back)."""
        release_free_memory()
        growth = resident_bytes() - self.baseline
        self.peak_growth = max(self.peak_growth, growth)
        return growth

    def check(self, needed_bytes: int = 0) -> str | None:
        """None if the growth so far, the reservations of the stages running now and
        ``needed_bytes`` fit the budget (less its :data:`HEADROOM`) together, else why
        not.

        Conservative: a running stage's memory is counted in the growth and in its
        reservation alike.
        """
        growth = self.growth()
        reserved = self.reserved
        if growth + reserved + needed_bytes <= (1.0 - HEADROOM) * self.budget_bytes:
            return None
        extra = f" + {needed_bytes / _GB:.2f} GB needed" if needed_bytes else ""
        running = (f" + {reserved / _GB:.2f} GB reserved by stages running"
                   if reserved else "")
        return (f"memory budget: resident memory grew {growth / _GB:.2f} GB since the scan "
                f"started{running}{extra}, over max_memory_gb={self.budget_gb:.2f}")

    @contextmanager
    def claim(self, nbytes: int) -> Iterator[str | None]:
        """Check ``nbytes`` (:meth:`check`) and, if they fit, hold them reserved while the
        stage runs, so that the stages of other threads (the trainer, the server) count
        them before they are resident. Yields why not (the stage must not run), or None.

        Examples
        --------
        >>> guard = MemoryGuard(budget_gb=1.0)
        >>> with guard.claim(1 << 20) as over:
        ...     over is None and guard.reserved == 1 << 20
        True
        """
        with self._lock:
            over = self.check(nbytes)
            if over is None:
                self.reserved += nbytes
        try:
            yield over
        finally:
            if over is None:
                with self._lock:
                    self.reserved -= nbytes
