"""Keep the physics: after the network, the raw counts have the last word where they can tell.

A denoiser trained for the mean squared error (or a classical one) shrinks what it is unsure
of: the height of a sharp ring (its smoothness prior broadens it), a weak spot with no
symmetric partner (the partner says "nothing here"). Both are biases, not noise, and both
are visible in the raw counts once enough pixels are summed. Two corrections, each at the
scale where the raw data are precise enough to prove the network wrong:

* **rings**: on pixels that lie on azimuthally symmetric rings or arcs (the isotropy tests of
  :mod:`~bluesky_symdenoise.physics.symmetry`), the denoised frame is scaled, radius by
  radius, so that its ring mean equals the raw frame's. The raw ring mean over hundreds of
  pixels is the Poisson-limited, unbiased estimate of I(q) (DESIGN.md §2): the network keeps
  its pixel-level noise reduction and texture, the full-ring I(q) keeps the raw area, height
  and position of every ring.
* **features without a partner**: where the local 180° test on the scan's sum finds
  intensity with no symmetric partner (a one-sided satellite, a spot of a second phase), the
  network's residual, smoothed at the spot scale, is put back, so the feature's integrated
  intensity is the raw frame's and not pulled towards its empty partner.

Everything else is left as the network made it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ..physics.symmetry import RingProfile, symmetry_validity

__all__ = ["FEATURE_SIGMA_PX", "FEATURE_WINDOWS", "MIN_RING_COUNTS", "MIN_RING_PIXELS",
           "RawConsistency"]

#: Windows (px) of the local 180° test that finds features without a partner: spot-sized,
#: so a feature's neighbourhood is not flagged with it.
FEATURE_WINDOWS: tuple[int, ...] = (3, 5, 9)
#: Gaussian width (px) of the residual put back on such features (narrower puts back more
#: of a sharp feature's peak, and more noise).
FEATURE_SIGMA_PX = 1.0
#: A ring bin is rescaled only if the denoised frame expects at least this many counts on it
#: (the choice depends on the denoised frame, not on the raw noise, so it adds no bias).
MIN_RING_COUNTS = 10.0
#: ... and at least this many symmetric pixels lie behind its mean.
MIN_RING_PIXELS = 12.0


@dataclass(frozen=True)
class RawConsistency:
    """Where and how a scan's denoised frames are held to its raw counts.

    Build it once per scan with :meth:`for_scan`, then :meth:`apply` it to every frame.

    Attributes
    ----------
    good
        Bool ``(H, W)``: pixels that hold data.
    rings
        Whole-ring profile about the beam centre, or None (no centre, or no symmetric ring).
    ring_pixels
        Bool ``(H, W)``: pixels on azimuthally symmetric rings or arcs, where each radius'
        raw-to-denoised ratio is measured (it is applied to every good pixel at that radius).
    features
        Bool ``(H, W)``: pixels of features without a 180° partner (residual put back).
    """

    good: np.ndarray
    rings: RingProfile | None
    ring_pixels: np.ndarray
    features: np.ndarray

    @classmethod
    def for_scan(cls, scan_sum: np.ndarray, good: np.ndarray,
                 center: tuple[float, float] | None, *, rings: RingProfile | None = None,
                 ring_valid: np.ndarray | None = None, arc_valid: np.ndarray | None = None,
                 z_threshold: float = 4.0) -> RawConsistency:
        """Decide the corrections from a scan's summed frames.

        Parameters
        ----------
        scan_sum
            Sum of the scan's frames (bad pixels 0).
        good
            Pixels that hold data.
        center
            Beam centre ``(row, col)``; None disables both corrections.
        rings, ring_valid, arc_valid
            The scan's ring profile and isotropy maps (from its
            :class:`~bluesky_symdenoise.denoise.channels.ChannelContext`).
        z_threshold
            Level of the local 180° test that marks a feature without a partner.
        """
        nothing = np.zeros_like(good, dtype=bool)
        if center is None:
            return cls(good=good, rings=None, ring_pixels=nothing, features=nothing)
        ring_pixels = nothing.copy()
        for valid in (ring_valid, arc_valid):
            if valid is not None:
                ring_pixels |= valid
        ring_pixels &= good
        test = symmetry_validity(scan_sum, center, ~good, windows=FEATURE_WINDOWS,
                                 z_threshold=z_threshold)
        return cls(good=good, rings=rings if ring_pixels.any() else None,
                   ring_pixels=ring_pixels, features=test.violation & good)

    def summary(self) -> dict[str, float]:
        """JSON-safe description for provenance."""
        n_good = max(int(self.good.sum()), 1)
        return {"ring_pixels_fraction": round(float(self.ring_pixels.sum()) / n_good, 4),
                "feature_pixels_fraction": round(float(self.features.sum()) / n_good, 5),
                "feature_windows_px": list(FEATURE_WINDOWS),
                "feature_sigma_px": FEATURE_SIGMA_PX}

    def apply(self, raw: np.ndarray, denoised: np.ndarray) -> np.ndarray:
        """Hold one denoised frame to its raw counts (rings, then features).

        Parameters
        ----------
        raw
            ``(H, W)`` raw counts of the frame (any value on bad pixels).
        denoised
            ``(H, W)`` the network's expected counts for it.

        Returns
        -------
        numpy.ndarray
            Float32 ``(H, W)``, non-negative; equal to ``denoised`` off rings and features.
        """
        good = self.good
        raw = np.where(good, raw, 0.0).astype(np.float64)
        out = np.maximum(np.where(good, denoised, 0.0).astype(np.float64), 0.0)
        if self.rings is not None:
            out = self._match_rings(raw, out)
        if self.features.any():
            out = self._restore_features(raw, out)
        return np.where(good, out, denoised).astype(np.float32)

    def _match_rings(self, raw: np.ndarray, out: np.ndarray) -> np.ndarray:
        on_ring = self.ring_pixels
        raw_mean, n_pixels = self.rings.mean(raw, on_ring)
        den_mean, _ = self.rings.mean(out, on_ring)
        # The ratio is measured on the symmetric pixels and applied to every good pixel at
        # that radius with enough of them behind it: a spot sitting on a ring keeps its shape
        # and follows its ring's scale.
        enough = (self.good & (n_pixels >= MIN_RING_PIXELS)
                  & (den_mean * n_pixels >= MIN_RING_COUNTS) & (den_mean > 0))
        ratio = np.divide(raw_mean, den_mean, out=np.ones_like(raw_mean), where=enough)
        return np.where(enough, out * ratio, out)

    def _restore_features(self, raw: np.ndarray, out: np.ndarray) -> np.ndarray:
        good = self.good
        weight = ndimage.gaussian_filter(good.astype(np.float64), FEATURE_SIGMA_PX,
                                         mode="constant")
        residual = ndimage.gaussian_filter(np.where(good, raw - out, 0.0), FEATURE_SIGMA_PX,
                                           mode="constant")
        put_back = np.divide(residual, weight, out=np.zeros_like(residual), where=weight > 1e-3)
        return np.where(self.features, np.maximum(out + put_back, 0.0), out)
