"""Whole frames of real detectors from pyFAI's registry, as their firmware writes them.

A Pilatus writes int32 frames with -1 in its module gaps and -2 on its flagged bad pixels;
an Eiger writes unsigned frames (uint32, or uint16 in 16-bit mode) with the dtype's maximum
in both, the value that also marks counter overflow. :func:`simulate_detector_scan`
renders a scene of :mod:`.scenes` over the whole detector (non-square, its own pixel size)
and exposes it that way, with the noise-free truth and the pyFAI gap mask beside it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from ..geometry import DetectorGeometry, detector_mask
from .noise import expose
from .scenes import Scene, make_scene

__all__ = ["SimulatedDetectorScan", "detector_dtype", "simulate_detector_scan"]

#: Marker values of signed frames (a Pilatus): gap, flagged bad pixel.
GAP_MARKER, BAD_MARKER = -1, -2


@dataclass(frozen=True)
class SimulatedDetectorScan:
    """A simulated scan of one named detector, with what a check needs beside it.

    Attributes
    ----------
    detector
        pyFAI registry name (``"Pilatus1M"``).
    frames
        ``(N, rows, cols)`` raw frames in the detector's dtype: gaps and flagged bad pixels
        hold the detector's markers (-1 and -2 in signed frames, the dtype's maximum in
        unsigned ones); counts above the dtype's maximum read the maximum (overflow).
    truth
        float32 ``(rows, cols)`` expected counts of every frame (the scene at ``counts``
        per valid pixel on average); 0 on the gaps.
    mask
        bool ``(rows, cols)``: pyFAI's mask of the detector (module gaps), True on gaps.
    flagged
        bool ``(rows, cols)``: the bad pixels the detector flags itself (the scene's dead
        pixels), marked in every frame. The scene's hot pixels are not flagged: they count.
    poni
        pyFAI PONI dictionary, ``"detector"`` the registry name.
    geometry
        The scan's :class:`~bluesky_symdenoise.geometry.DetectorGeometry`.
    scene
        The rendered :class:`~.scenes.Scene` (its own mask is not the detector's: use
        :attr:`mask`).
    info
        JSON-safe facts: detector, dtype, scene, counts, seed, centre, marker values.
    """

    detector: str
    frames: np.ndarray
    truth: np.ndarray
    mask: np.ndarray
    flagged: np.ndarray
    poni: dict[str, Any]
    geometry: DetectorGeometry
    scene: Scene
    info: dict[str, Any]


def detector_dtype(detector: str) -> np.dtype:
    """The dtype a detector's frames come in: int32 for a Pilatus (signed, -1/-2 markers),
    uint32 for an Eiger and every other counting detector."""
    from ..geometry import registry_detector_name

    name = registry_detector_name(detector)
    return np.dtype(np.int32 if name.lower().startswith("pilatus") else np.uint32)


def simulate_detector_scan(detector: str = "Pilatus1M", *, scene: str = "powder",
                           counts: float = 1.0, frames: int = 4, seed: int = 0,
                           dtype: str | None = None,
                           center: tuple[float, float] | None = None
                           ) -> SimulatedDetectorScan:
    """Frames of a whole detector of pyFAI's registry, as the detector writes them.

    Parameters
    ----------
    detector
        pyFAI registry name (``"Pilatus1M"``, ``"Eiger2_4M"``, ...).
    scene
        A kind of :data:`~.scenes.SCENES` (``"powder"``, ``"textured"``, ``"saxs"``,
        ``"lattice"``, ...), rendered on the whole detector at its pixel size.
    counts
        Mean expected counts per valid pixel.
    frames
        Number of frames (independent Poisson exposures of the same truth).
    seed
        Seeds the scene, its defects and the noise.
    dtype
        Integer dtype of the frames (``"int32"``, ``"uint16"``, ``"uint32"``); None: the
        detector's own (:func:`detector_dtype`).
    center
        Beam centre ``(row, col)`` in pixels; None: the middle of the detector. Any point
        on the detector (an off-centre beam) works.

    Returns
    -------
    SimulatedDetectorScan

    Raises
    ------
    bluesky_symdenoise.geometry.GeometryError
        An unknown detector, or a centre off it.
    ValueError
        A non-integer ``dtype``, ``frames < 1`` or ``counts <= 0``.
    """
    if frames < 1 or not counts > 0:
        raise ValueError(f"need frames >= 1 and counts > 0, got frames={frames}, "
                         f"counts={counts}")
    geometry = DetectorGeometry.from_detector(detector, center=center)
    name = str(geometry.detector_name)
    out_dtype = detector_dtype(name) if dtype is None else np.dtype(dtype)
    if out_dtype.kind not in "iu":
        raise ValueError(f"dtype must be an integer dtype, got {out_dtype}")
    rendered = make_scene(scene, shape=geometry.shape, center=geometry.center, seed=seed,
                          detector=name, pixel_size=geometry.pixel_size)
    geometry = replace(geometry, distance=rendered.geometry.distance,
                       wavelength=rendered.geometry.wavelength)
    gaps = detector_mask(geometry)
    if gaps is None:
        gaps = np.zeros(geometry.shape, bool)
    valid = ~gaps
    expectation = np.asarray(rendered.expectation, np.float32)
    truth = expectation * np.float32(counts / float(expectation[valid].mean()))
    truth[gaps] = 0.0
    flagged = rendered.defects.dead & valid

    limit = np.iinfo(out_dtype).max
    if out_dtype.kind == "i":
        gap_value, bad_value = GAP_MARKER, BAD_MARKER
    else:
        gap_value = bad_value = limit
    rng = np.random.default_rng([seed, 1])
    stack = np.empty((frames, *geometry.shape), out_dtype)
    for i in range(frames):
        frame = expose(truth, rng=rng, defects=rendered.defects)  # int32 counts
        frame = np.minimum(frame, limit) if limit < np.iinfo(np.int32).max else frame
        out = stack[i]
        out[...] = frame
        out[gaps] = gap_value
        out[flagged] = bad_value
    info = {"detector": name, "dtype": str(out_dtype), "scene": scene,
            "counts": float(counts), "seed": int(seed), "frames": int(frames),
            "center": [float(c) for c in geometry.center],
            "gap_value": int(gap_value), "bad_value": int(bad_value),
            "n_gap_pixels": int(gaps.sum()), "n_flagged": int(flagged.sum()),
            "n_hot": int((rendered.defects.hot & valid).sum())}
    return SimulatedDetectorScan(detector=name, frames=stack, truth=truth, mask=gaps,
                                 flagged=flagged, poni=geometry.poni_dict(),
                                 geometry=geometry, scene=rendered, info=info)
