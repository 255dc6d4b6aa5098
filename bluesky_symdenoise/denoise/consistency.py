"""Keep the physics: after the network, the raw counts have the last word where they can tell.

A denoiser trained for the mean squared error (or a classical one) shrinks what it is unsure
of: the height of a sharp ring (its smoothness prior broadens it), a weak spot with no
symmetric partner (the partner says "nothing here"). Both are biases, not noise, and both
are visible in the raw counts once enough pixels are summed. Two corrections, each at the
scale where the raw data are precise enough to prove the network wrong:

* **rings**: on pixels that lie on azimuthally symmetric rings or arcs (the isotropy tests of
  :mod:`~bluesky_symdenoise.denoise.symmetry`), the denoised frame is scaled, radius by
  radius, so that its ring mean equals the raw frame's. The raw ring mean over hundreds of
  pixels is the Poisson-limited, unbiased estimate of I(q) (DESIGN.md §2): the network keeps
  its pixel-level noise reduction and texture, the full-ring I(q) keeps the raw area, height
  and position of every ring. The ring means are matched coarse to fine, in radial bins of
  :data:`RING_BINS_PX` (4, 2, 1 and 0.5 px): each pixel's value is shared between the two
  nearest bins, so a bin of width w holds the profile only at the scale of a 2w-wide
  triangle, and 1 px bins alone left a ring about 1 px wide broadened in I(q) (a generic
  centre's bilinear 180° partner broadens it in the network's output; ``bench/iq_ablation.py``
  measures it). Half-pixel bins hold the profile at the resolution of an integration with
  two q bins per pixel; the coarser bins first hold radii
  where the fine bins have too few pixels or counts to be held (the detector's corners, low
  counts), which the fine bins alone would leave to the network. Only the
  :data:`RING_BIN_PX` bins are held outright; at the other scales each bin's correction is
  shrunk by its own Poisson noise (only a deviation the raw data can prove is corrected), so
  the extra scales do not put the raw noise back into the frame (held outright, the 4 to
  0.5 px bins would bring back part of the raw noise the network removed); where the
  scan's summed counts show the profile sharper than the 1 px bins hold (half-pixel bins
  further from the 1 px profile than :data:`HALF_PIXEL_Z` of their noise: a ring about 1 px
  wide), the 0.5 px bins are held outright too, so the network's sub-pixel broadening does
  not stay in the ring's height and area. At each scale
  the scaling is repeated a few times: one pass scales a broadened ring by its own
  bin-shared mean and leaves the peak a few per cent low; the repeats converge to the raw
  means (a multiplicative fixed point, as in Richardson-Lucy). On a textured ring, where only the
  local arc is isotropic, the arc's mean is used, in 1 px bins with one pass (its mean is
  noisier); then, since the arcs do not hold the whole ring's mean (the arcs' held bins
  and the texture between them do not add up to it), the whole ring's mean over all the
  good pixels at those radii, the one an integrator takes, is held as on isotropic rings
  (same scales and rule); without it a textured ring comes out broader and lower than raw's
  in the full-ring I(q) (``bench/iq.py``, ``docs/methods.md``). At
  radii that are neither (the spots of a lattice) the whole ring's mean is held at every
  scale shrunk by its noise: held outright, a radius's few spots put their noise into the
  background between them.
* **frames**: a frame's ring means are pooled with its neighbouring frames' where they agree
  within the noise (:func:`pooled_ring_means`), and are its own where a ring appeared,
  vanished or moved (a drift of the whole pattern is measured on the whole profile,
  :mod:`.ring_drift`): on a static or slowly changing scan the full-ring I(q) rests on two
  or three frames' counts, and neither a transition nor a drift is smeared.
* **spots**: where the scan's sum shows intensity with no symmetric partner (the local 180°
  test: a one-sided satellite, a spot of a second phase) or a local excess over its
  surroundings off the rings, measured over the radial background and the surroundings'
  pixels off the spots found (a spot of any kind: the network's smoothness prior shrinks
  weak ones most, whether they have a partner or not; a weak one beside a strong one too),
  the denoised frame is scaled so that its counts, summed at the spot scale (a Gaussian of
  :data:`FEATURE_SIGMA_PX`), equal the raw frame's: the spot keeps the network's shape and
  low noise, and the raw integrated intensity, not one pulled towards an empty partner or
  the background. Spots whose partner passed the 180° test are held too: for a denoiser
  that averaged partners, to the mean of the spot's and its partner's raw counts (the
  estimate it rests on, from twice the counts); its smoothness prior still shrinks them
  (``bench.iq_ablation``, the lattice's spots at 0.1 counts/pixel). Given neighbouring
  frames, a spot's raw sums are pooled with theirs where the spot did not change
  (:meth:`SpotSums.pooled_sums`, as the ring means are): on a static scan its intensity
  rests on two or three frames' counts, not on one frame's noise.

Everything else is left as the network made it.
"""

from __future__ import annotations

import copy
import dataclasses
import warnings
from collections.abc import Callable, Sequence
from dataclasses import InitVar, dataclass, field

import numpy as np
from scipy import ndimage, optimize, sparse, special
from scipy.ndimage import uniform_filter1d
from scipy.stats import chi2

from .channels import ARC_SECTORS
from .ring_drift import DRIFT_BIAS_SIGMAS, DRIFT_Z, RadialDrift, moved_bins, radial_drifts
from .symmetry import (
    BAND_ROWS,
    TAPS_KEPT_UP_TO,
    BinReader,
    BinScatter,
    RingProfile,
    isotropy_validity,
    ring_profile,
    rotation180,
    row_bands,
    symmetry_validity,
)

__all__ = ["ARC_MATCH_PASSES", "CREST_BASE_BINS", "CREST_Z", "EXCESS_BACKGROUND_ERROR",
           "EXCESS_Z", "EXCESS_Z_READOUT", "FEATURE_MATCH_PASSES",
           "FEATURE_MATCH_PASSES_OWN_COUNTS", "FEATURE_SIGMA_PX", "HALF_PIXEL_Z",
           "FEATURE_WINDOWS", "MIN_RING_COUNTS", "MIN_RING_PIXELS", "NARROW_RING_PX",
           "POOL_CHANGE_P", "POOL_SINGLE_Z", "POOL_WINDOW_BINS", "RING_BIN_PX",
           "SPARSE_RING_PIXELS", "RING_BINS_PX", "RING_MATCH_PASSES", "RawConsistency",
           "SpotSums",
           "UNCONVERGED_FACTOR", "local_excess",
           "pooled_ring_means", "radial_background"]

#: Windows (px) of the local 180° test that finds features without a partner: spot-sized,
#: so a feature's neighbourhood is not flagged with it.
FEATURE_WINDOWS: tuple[int, ...] = (3, 5, 9)
#: Level of the local-excess test (one-sided, in standard deviations) that marks a spot.
EXCESS_Z = 4.5
#: Its level on a readout-dominated scan (an integrating detector whose readout variance
#: exceeds the typical pixel's photons, :data:`~.detector_noise.READOUT_DOMINATED`): there a
#: faint spot's excess is a few σ of the readout noise, and at :data:`EXCESS_Z` the test
#: marked a third of a one-sided feature that it marks whole on the same photons counted.
EXCESS_Z_READOUT = 3.0
#: Box (px) of the local-excess test and the inner and outer boxes of its background frame.
EXCESS_BOXES: tuple[int, int, int] = (5, 9, 17)
#: Error of the radial background model of the local-excess test, as a fraction of the
#: correction it makes to a flat background (see :func:`local_excess`).
EXCESS_BACKGROUND_ERROR = 0.5
#: Marked spots are grown by this many pixels (their wings).
FEATURE_GROW_PX = 2
#: Gaussian width (px) at which a spot's denoised counts are held to the raw ones (narrower
#: restores more of a sharp spot's peak, and brings back more noise).
FEATURE_SIGMA_PX = 2.0
#: Scaling passes towards the raw spot counts. The network's smoothness prior broadens a
#: spot; each pass converges the spot's shape further towards the raw counts at the same
#: spot scale (as Richardson-Lucy's iterations do), and brings back more of their noise.
#: Where the denoiser averaged 180° partners, the spots that have one are held to the mean
#: of two spots' counts: there 4 passes narrowed a lattice's peak in I(q) at 0.1
#: counts/pixel (fitted FWHM minus the mean of the scan's raw frames' +0.6 % → +0.3 % on
#: 12 scans) for −0.07 to +0.03 dB of PSNR on the lattices and the fibre
#: (``bench.iq_ablation --spot-passes``, ``bench.heldout``). On a readout-dominated
#: scan (:data:`EXCESS_Z_READOUT`) the denoiser broadens a spot more than on the same
#: photons counted, and 4 passes let a one-sided feature keep about as much on its own
#: pixels as on counting data (``bench.flat_panel --counting-twins``, docs/detectors.md).
FEATURE_MATCH_PASSES = 4
#: ... on a counting scan whose denoiser did not average partners (``thinning``,
#: ``noise2sr``): every spot is held to one frame's own counts, and on the one-sided
#: lattice 4 passes cost 0.16-0.26 dB of PSNR against 2 (``bench.heldout``, 200 steps).
FEATURE_MATCH_PASSES_OWN_COUNTS = 2
#: Radial bin width (px) of the ring and arc profiles that decide where rings are held.
RING_BIN_PX = 1.0
#: Radial bin widths (px) of the ring means the denoised frame is held to, coarse to fine.
RING_BINS_PX: tuple[float, ...] = (4.0, 2.0, 1.0, 0.5)
#: Half-pixel ring bins are held outright, not shrunk by their noise, where the scan's
#: summed counts put their mean further than this many standard deviations from the 1 px
#: profile read at their radius (:func:`sharp_half_pixel_bins`): the profile is sharper
#: there than the 1 px bins hold. A per-scan decision on the scan's counts, not a frame's.
HALF_PIXEL_Z = 5.0
#: Radii with fewer good pixels than this in their 1 px ring (the detector's corners) have
#: their whole ring's mean held outright, as isotropic rings do.
SPARSE_RING_PIXELS = 48.0
#: Frame-to-frame pooling of the ring means (:func:`pooled_ring_means`): half-width in
#: bins of the window a change is tested over, its significance level, and the single-bin
#: z that also counts as a change.
POOL_WINDOW_BINS = 2
POOL_CHANGE_P = 1e-3
POOL_SINGLE_Z = 3.5
#: Scaling passes towards the raw ring means: one pass leaves a broadened ring's height a
#: little low, the repeats converge to the raw means (``bench/bias.py`` measures the height).
RING_MATCH_PASSES = 4
#: ... and towards the raw arc means of textured rings: one. An arc's mean rests on 16 times
#: fewer pixels than its ring's, so each further pass brings back more of the raw noise; on
#: textured scans more passes cost PSNR (``bench/heldout.py``, ``--scenes textured``) for a
#: ring height that one pass already brings to within a few per cent of the raw one.
ARC_MATCH_PASSES = 1
#: A ring bin is rescaled only if the denoised frame expects at least this many counts on it
#: (the choice depends on the denoised frame, not on the raw noise, so it adds no bias).
MIN_RING_COUNTS = 10.0
#: ... and at least this many symmetric pixels lie behind its mean.
MIN_RING_PIXELS = 12.0
#: A run of sparse ring bins (:func:`_merge_sparse_bins`) ends before a bin whose mean in the
#: scan's summed counts differs from the run's by more than this many standard deviations
#: (Poisson, two-sample): a ring the denoiser missed in a detector corner is not pooled
#: with the background beside it. A per-scan decision on the scan's counts, not a frame's.
RUN_BREAK_Z = 3.0
#: ... as one tail's probability (the exact test's level, :func:`_scan_mean_changes`).
_RUN_BREAK_P = float(special.ndtr(-RUN_BREAK_Z))


def _kernel_squared(sigma: float) -> float:
    """``Σk²`` of the spot-scale Gaussian (normalised, cut at 3 σ as
    ``ndimage.gaussian_filter(truncate=3)``): a weighted sum's Poisson variance over its
    level."""
    radius = int(3.0 * sigma + 0.5)
    kernel = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    kernel /= kernel.sum()
    return float(np.sum(kernel ** 2) ** 2)


#: ``Σk²`` of the spot-scale sums (:class:`SpotSums`), for their noise
#: (:meth:`SpotSums.pooled_sums`).
_SPOT_KERNEL_SQUARED = _kernel_squared(FEATURE_SIGMA_PX)
#: A ring hold's means have not converged at a pixel whose last pass still scaled it by
#: more than this (relative); a held pixel off the measured ones then takes what its bins'
#: means received, not the product of the factors asked for.
UNCONVERGED_FACTOR = 0.05


@dataclass(frozen=True)
class RawConsistency:
    """Where and how a scan's denoised frames are held to its raw counts.

    Build it once per scan with :meth:`for_scan`, then :meth:`apply` it to every frame.

    Attributes
    ----------
    good
        Bool ``(H, W)``: pixels that hold data.
    rings, arcs
        Whole-ring and arc (:data:`ARC_SECTORS` sectors) profiles about the beam centre in
        :data:`RING_BIN_PX` bins, or None (no centre, or no symmetric ring or arc).
    ring_levels
        Whole-ring profiles in :data:`RING_BINS_PX` bins, coarse to fine, that the ring
        pixels are held to in turn (empty: ``rings`` alone).
    ring_pixels, arc_pixels
        Bool ``(H, W)``: pixels where the scan's sum is isotropic over the whole ring, or only
        over the local arc (a textured ring); the raw-to-denoised ratios are measured there.
    ring_scope
        Bool ``(H, W)``: pixels held to their whole ring's ratio (at radii where most good
        pixels are on an isotropic ring); the other good pixels follow their arc's ratio. A
        spot sitting on a ring keeps its shape and follows its ring's scale.
    whole_ring_scope
        Bool ``(H, W)``: the radii off ``ring_scope`` where most good pixels are on
        isotropic arcs (textured rings), or where fewer than :data:`SPARSE_RING_PIXELS`
        good pixels lie in the 1 px ring (the detector's corners): their whole ring's mean
        over all good pixels is held as on isotropic rings (after the arcs). At the
        remaining radii (spots of a lattice) the whole ring's mean is held only as far as
        the raw data prove the denoiser wrong (every scale shrunk).
    features
        Bool ``(H, W)``: pixels of spots always held to the raw counts: features without a
        180° partner, and local excesses off the rings whose partner is not usable.
    partnered_spots
        Bool ``(H, W)``: local excesses whose 180° partner passed the test. Held like the
        features; for a denoiser that averages partners (``partners_used=True`` in
        :meth:`apply`) to the mean of their own and their partners' raw counts, which is
        what it estimates them from (its smoothness prior shrinks them all the same).
    readout_dominated
        Whether the spots were found, and are held, by the readout-dominated rules
        (:meth:`for_scan`).
    sharp_bins
        Per bin of the 0.5 px ring profile: held outright where the ring holds at that scale
        are otherwise shrunk (:func:`sharp_half_pixel_bins`); None: shrunk everywhere.
    ring_crests
        Per bin of the 1 px ring profile: a ring's crest and the bins
        :data:`CREST_BASE_BINS` either side of it (:func:`ring_crest_bins`); None: none
        found. The per-shell angular model's mix keeps the totals of both halves of each
        1 px shell there (:func:`~.angular.mix_within_shells`).
    crest_half_bins
        Per bin of the 0.5 px ring profile: held outright across a ring's crest where a
        frame's counts are few (:func:`low_count_crest_bins`); None: none.
    narrow_crests
        Per bin of the 1 px ring profile: the bins of ``ring_crests`` whose ring is narrower
        than the angular model's spline follows (:func:`narrow_crest_bins`); there its mix
        keeps the totals of each quarter of a shell. None: none.
    scan_sum
        The scan's summed frames (init only, not kept): where their means change, runs of
        sparse ring bins end (:data:`RUN_BREAK_Z`); None: runs from the denoised frame alone.
    """

    good: np.ndarray
    rings: RingProfile | None
    ring_pixels: np.ndarray
    features: np.ndarray
    arcs: RingProfile | None = None
    arc_pixels: np.ndarray | None = None
    ring_scope: np.ndarray | None = None
    partnered_spots: np.ndarray | None = None
    ring_levels: tuple[RingProfile, ...] = ()
    whole_ring_scope: np.ndarray | None = None
    readout_dominated: bool = False
    sharp_bins: np.ndarray | None = None
    ring_crests: np.ndarray | None = None
    crest_half_bins: np.ndarray | None = None
    narrow_crests: np.ndarray | None = None
    center: tuple[float, float] | None = None
    scan_sum: InitVar[np.ndarray | None] = None
    #: Spot sums over the spots held (features and partnered spots), built once per scan.
    _spot_sums: SpotSums = field(init=False, repr=False, compare=False)
    #: Flat indices of the partnered spots' good pixels (held to their pairs' means).
    _pair_points: np.ndarray = field(init=False, repr=False, compare=False)
    #: The ring holds of :meth:`apply`, their bins found once per scan (:meth:`_steps`).
    _hold_steps: tuple = field(init=False, repr=False, compare=False)

    def __post_init__(self, scan_sum: np.ndarray | None) -> None:
        partnered = (self.partnered_spots if self.partnered_spots is not None
                     else np.zeros_like(self.features))
        object.__setattr__(self, "_spot_sums", SpotSums.for_pixels(self.features | partnered))
        object.__setattr__(self, "_pair_points", np.flatnonzero(partnered & self.good))
        object.__setattr__(self, "_hold_steps", self._steps(scan_sum))

    @classmethod
    def for_scan(cls, scan_sum: np.ndarray, good: np.ndarray,
                 center: tuple[float, float] | None, *,
                 ring_valid: np.ndarray | None = None, z_threshold: float = 4.0,
                 isotropy_z_threshold: float = 5.5,
                 readout_dominated: bool = False, frames: int = 1) -> RawConsistency:
        """Decide the corrections from a scan's summed frames.

        Parameters
        ----------
        scan_sum
            Sum of the scan's frames (bad pixels 0).
        good
            Pixels that hold data.
        center
            Beam centre ``(row, col)``; None disables both corrections.
        ring_valid
            Where the whole-ring isotropy test passed on the scan's sum (from its
            :class:`~bluesky_symdenoise.denoise.channels.ChannelContext`); None: tested here.
        z_threshold
            Level of the local 180° test that marks a feature without a partner.
        isotropy_z_threshold
            Level of the isotropy tests (as the channel context's).
        readout_dominated
            The scan is an integrating detector's under more readout noise than photon noise
            (:attr:`~.detector_noise.NoiseCalibration.readout_dominated`). Its tests then
            lack the power they have on counts, and four rules change so that a faint
            one-sided feature is still held to its raw counts: the local-excess test runs at
            :data:`EXCESS_Z_READOUT`; an excess counts as a spot even on pixels that passed
            an isotropy test (under the readout noise a quarter of a one-sided feature's
            pixels passed the arc test, which then spread it over its arc); a spot is
            held to the raw counts whether or not its 180° partner passed (the 180° test
            cannot show that a faint spot has none); and in :data:`FEATURE_MATCH_PASSES`
            passes whichever denoiser ran (the denoiser broadens a spot more there; on
            counting scans a denoiser that did not average partners gets
            :data:`FEATURE_MATCH_PASSES_OWN_COUNTS`). Measured on the flat-panel twins
            (``bench.flat_panel --counting-twins``, docs/detectors.md).
        frames
            How many frames ``scan_sum`` sums (a frame's counts decide which ring bins are
            held outright across a crest, :func:`low_count_crest_bins`).
        """
        nothing = np.zeros_like(good, dtype=bool)
        if center is None:
            return cls(good=good, rings=None, ring_pixels=nothing, features=nothing)
        shape = good.shape
        if ring_valid is None:
            ring_valid = isotropy_validity(scan_sum, center, ~good, sectors=1,
                                           z_threshold=isotropy_z_threshold).valid
        ring_pixels = ring_valid & good
        rings = ring_profile(shape, center, 1, RING_BIN_PX)
        # Radii where most good pixels lie on an isotropic ring use the whole ring's mean
        # (hundreds of pixels); elsewhere (textured rings) the arc's mean.
        coverage, _ = rings.mean(ring_pixels.astype(np.float64), good)
        ring_scope = good & (coverage >= 0.5)
        arc_test = isotropy_validity(scan_sum, center, ~good, sectors=ARC_SECTORS,
                                     bin_width=RING_BIN_PX, z_threshold=isotropy_z_threshold)
        arc_pixels = arc_test.valid & good & ~ring_scope
        arcs = ring_profile(shape, center, ARC_SECTORS, RING_BIN_PX)
        arc_support = arcs.support(arc_pixels)
        # Held only where an arc has enough isotropic pixels to be held to its mean.
        arcs_held = bool((good & ~ring_scope & (arc_support >= MIN_RING_PIXELS)).any())
        test = symmetry_validity(scan_sum, center, ~good, windows=FEATURE_WINDOWS,
                                 z_threshold=z_threshold)
        # Rings are held by their means; a spot on a ring is found by the 180° test. The
        # excess is measured over the radial background (a SAXS curve falls by orders of
        # magnitude within a box's surroundings next to the beamstop).
        # Textured radii (most good pixels pass the arc test) have their whole ring's mean
        # held as on isotropic rings, and so do the radii with too few good pixels for the
        # isotropy tests to decide (the detector's corners): the raw mean there is raw's
        # I(q), which no denoiser beats with so few pixels, and a 2-D denoiser is biased
        # there (its neighbourhood lies on one side). At the other radii off the isotropic
        # rings (a lattice's spots), only as far as the raw data prove it wrong.
        arc_coverage, ring_support = rings.mean(arc_pixels.astype(np.float64), good)
        whole_ring_scope = good & ~ring_scope & ((arc_coverage >= 0.5)
                                                 | (ring_support < SPARSE_RING_PIXELS))
        spots = local_excess(scan_sum, good,
                             background=radial_background(rings, scan_sum, good),
                             z_threshold=EXCESS_Z_READOUT if readout_dominated else EXCESS_Z)
        if not readout_dominated:
            spots &= ~(ring_pixels | arc_pixels)
        partnered = nothing if readout_dominated else spots & test.valid
        ring_levels = tuple(ring_profile(shape, center, 1, width) for width in RING_BINS_PX)
        crests = ring_crest_bins(scan_sum, good, ring_levels)
        return cls(good=good, rings=rings if ring_pixels.any() else None,
                   ring_levels=ring_levels,
                   sharp_bins=sharp_half_pixel_bins(scan_sum, good, ring_levels),
                   ring_crests=crests,
                   crest_half_bins=low_count_crest_bins(scan_sum, good, ring_levels, crests,
                                                        frames=frames),
                   narrow_crests=narrow_crest_bins(scan_sum, good, ring_levels, crests),
                   ring_pixels=ring_pixels,
                   features=(test.violation | (spots & ~partnered)) & good,
                   partnered_spots=partnered & good,
                   arcs=arcs if arcs_held else None,
                   arc_pixels=arc_pixels, ring_scope=ring_scope,
                   whole_ring_scope=whole_ring_scope, readout_dominated=readout_dominated,
                   center=center, scan_sum=scan_sum)

    def summary(self) -> dict[str, float | list[float]]:
        """JSON-safe description for provenance."""
        n_good = max(int(self.good.sum()), 1)
        n_arc = int(self.arc_pixels.sum()) if self.arc_pixels is not None else 0
        n_partnered = (int(self.partnered_spots.sum()) if self.partnered_spots is not None
                       else 0)
        return {"ring_pixels_fraction": round(float(self.ring_pixels.sum()) / n_good, 4),
                "arc_pixels_fraction": round(n_arc / n_good, 4),
                "ring_bin_px": RING_BIN_PX,
                "ring_bins_px": list(RING_BINS_PX),
                "ring_match_passes": RING_MATCH_PASSES,
                "arc_match_passes": ARC_MATCH_PASSES,
                "feature_pixels_fraction": round(float(self.features.sum()) / n_good, 5),
                "partnered_spot_pixels_fraction": round(n_partnered / n_good, 5),
                "feature_windows_px": list(FEATURE_WINDOWS),
                "excess_z": EXCESS_Z_READOUT if self.readout_dominated else EXCESS_Z,
                "readout_dominated": self.readout_dominated,
                "excess_background_error": EXCESS_BACKGROUND_ERROR,
                "feature_sigma_px": FEATURE_SIGMA_PX,
                "feature_match_passes": FEATURE_MATCH_PASSES,
                "feature_match_passes_without_partners": self.spot_passes(False),
                "half_pixel_z": HALF_PIXEL_Z,
                "sharp_half_pixel_bins": int(self.sharp_bins.sum())
                if self.sharp_bins is not None else 0,
                "ring_crest_bins": int(self.ring_crests.sum())
                if self.ring_crests is not None else 0,
                "crest_half_pixel_bins": int(self.crest_half_bins.sum())
                if self.crest_half_bins is not None else 0,
                "narrow_crest_bins": int(self.narrow_crests.sum())
                if self.narrow_crests is not None else 0,
                "narrow_ring_px": NARROW_RING_PX,
                "crest_outright_counts": CREST_OUTRIGHT_COUNTS,
                "whole_ring_pixels_fraction": round(
                    float(self.whole_ring_scope.sum()) / n_good, 4)
                if self.whole_ring_scope is not None else 0.0,
                "pool_window_bins": POOL_WINDOW_BINS, "pool_change_p": POOL_CHANGE_P,
                "pool_single_z": POOL_SINGLE_Z, "pool_drift_z": DRIFT_Z,
                "pool_drift_bias_sigmas": DRIFT_BIAS_SIGMAS}

    def apply(self, raw: np.ndarray, denoised: np.ndarray, *,
              partners_used: bool = True,
              neighbours: Sequence[np.ndarray] = ()) -> np.ndarray:
        """Hold one denoised frame to its raw counts (rings, arcs, then spots).

        Parameters
        ----------
        raw
            ``(H, W)`` raw counts of the frame (any value on bad pixels).
        denoised
            ``(H, W)`` the network's expected counts for it.
        partners_used
            Whether the denoiser averaged 180° partners (symmetry method, 180° + BM3D):
            spots with a partner are then held to the mean of their and their partner's
            raw counts; if not, to their own.
        neighbours
            Neighbouring raw frames of the scan (same dose as ``raw``; none: no pooling).
            Where a neighbour's ring means agree with the frame's within the noise
            (:func:`pooled_ring_means`), the rings are held to the means pooled with it:
            the full-ring I(q) then rests on the counts of several frames; where a ring
            changed, on the frame's own. The held spots' raw sums are pooled the same
            way, spot by spot (:meth:`SpotSums.pooled_sums`).

        Returns
        -------
        numpy.ndarray
            Float32 ``(H, W)``, non-negative; equal to ``denoised`` off rings and features.
        """
        good = self.good
        # Frames in float32 (bin sums are float64): 4 bytes a pixel per copy on a 4 Mpx
        # detector, where this is the largest transient of serving a frame.
        raw = np.where(good, raw, 0.0).astype(np.float32)
        out = np.maximum(np.where(good, denoised, 0.0).astype(np.float32), 0.0)
        neighbours = [np.where(good, n, 0.0).astype(np.float32) for n in neighbours]
        drifts = self.drifts(raw, neighbours)
        for step in self._hold_steps:
            step.match(raw, out, neighbours if step.pooled else (), drifts)
        spot_sums = self._spot_sums
        if spot_sums.index.size:
            target, paired = self._spot_target(raw, out, partners_used)
            pooled = None
            if neighbours:
                scale = np.ones(spot_sums.index.size)
                scale[np.searchsorted(spot_sums.index, paired)] = 0.5
                pooled = spot_sums.pooled_sums(
                    target, [self._spot_target(near, out, partners_used)[0]
                             for near in neighbours], variance_scale=scale)
            out = spot_sums.match(target, out, passes=self.spot_passes(partners_used),
                                  target_sums=pooled)
        out = np.asarray(out, np.float32)
        np.copyto(out, np.asarray(denoised, np.float32), where=~good)
        return out

    def _spot_target(self, raw: np.ndarray, estimate: np.ndarray, partners_used: bool
                     ) -> tuple[np.ndarray, np.ndarray]:
        """The counts the spots are held to, and the flat indices of the pixels held to
        their pair's mean: the raw frame's; for a denoiser that averaged
        180° partners, on the spots whose partner passed the test, the mean of the spot's
        raw counts and its partner's, the same expectation from twice the counts, as the
        denoiser's own estimate rests on.

        On a generic centre the partner is read bilinearly, which smooths a sharp spot (its
        partner keeps less of its counts on the spot's footprint than the spot): the
        partner's raw counts are corrected by what the same reading
        does to ``estimate`` (the denoised frame, held so far), ``estimate - partner of
        estimate``, a first-order correction that needs no noise-free image."""
        points = self._pair_points
        if not partners_used or not points.size or self.center is None:
            return raw, points[:0]
        partners = rotation180(raw.shape, self.center)
        mask = ~self.good
        partner, valid = partners.sample_at(raw, mask, points)
        smoothed, _ = partners.sample_at(estimate, mask, points)
        target = raw.copy()
        flat, own = target.reshape(-1), np.asarray(estimate).reshape(-1)
        held = points[valid]
        flat[held] = 0.5 * (flat[held] + partner[valid] + own[held] - smoothed[valid])
        return target, held

    def spot_passes(self, partners_used: bool) -> int:
        """Scaling passes of the spot hold (:meth:`SpotSums.match`):
        :data:`FEATURE_MATCH_PASSES`, or :data:`FEATURE_MATCH_PASSES_OWN_COUNTS` on a
        counting scan whose denoiser did not average 180° partners."""
        if partners_used or self.readout_dominated:
            return FEATURE_MATCH_PASSES
        return FEATURE_MATCH_PASSES_OWN_COUNTS

    def drifts(self, raw: np.ndarray, neighbours: Sequence[np.ndarray]
               ) -> list[RadialDrift | None]:
        """Per neighbouring frame, its rings' radial drift against ``raw``'s
        (:func:`~.ring_drift.radial_drift`, whole rings in 1 px bins over the good pixels;
        None without a beam centre)."""
        profile = next((p for p in self.ring_levels if p.bin_width == RING_BIN_PX), None)
        if profile is None or not neighbours:
            return [None] * len(neighbours)
        found: list[RadialDrift | None] = [*radial_drifts(profile, self.good, raw, neighbours)]
        return found

    def with_frame_replaced(self, old: np.ndarray, new: np.ndarray) -> RawConsistency:
        """These holds, their scan counts (where runs of sparse bins end, and how a run's
        level is shared among its bins) taken as if ``new`` had been summed in place of
        ``old``, one of the scan's frames.

        The held-out I(q) check (:meth:`~.engine.ScanDenoiser.iq_check`) denoises one half
        of a frame and scores it against the other half's raw I(q): held to the whole
        scan's counts, which hold that other half, the denoised half would share its noise
        and the check would find it closer to raw than it is (a sigma too small).
        """
        change = np.asarray(new, np.float64) - np.asarray(old, np.float64)
        out = copy.copy(self)
        object.__setattr__(out, "_hold_steps", tuple(step.with_scan_change(change)
                                                     for step in self._hold_steps))
        return out

    def _steps(self, scan_sum: np.ndarray | None = None) -> tuple[_HeldBins, ...]:
        """The ring holds :meth:`apply` makes, in order, with their bins found once (and,
        given the scan's summed frames, where their runs of sparse bins end).

        Rings first (coarse to fine), then the arcs of textured rings, then the whole ring's
        mean off the isotropic rings: outright on textured rings and sparse radii (the arcs
        keep the texture, this the full-ring I(q)), shrunk elsewhere (a lattice's spots).
        At the lattice radii (off the rings, arcs and whole-ring scope) the held spots
        (:meth:`spots`) and the pixels around them are held apart, each to its own raw
        means at every scale (the spots' shrunk in every bin but the 0.5 px bins across a
        crest at a frame's few counts, held to the raw-to-denoised ratio fitted across the
        crest, :func:`_crest_fit`; the spot hold holds them to their raw counts after, at
        the spot scale). A bin's total, as an integrator takes it, is then raw's on both
        parts. Held together, a bin whose spots the denoiser had shrunk was raised whole,
        background with them, to its raw mean; the spot hold then gave the spots their
        counts back a second time and the background kept the first: a lattice's strongest
        peak in I(q) came out higher than the mean of the scan's raw frames
        (docs/methods.md, ``bench.iq_ablation --scene lattice``). Where the whole
        ring's mean is held outright (textured rings, sparse radii) a spot is part of an
        arc's texture and stays in that hold. The 0.5 px bins of :meth:`_outright_bins`
        are held outright in every scope but the lattice's spots: off the rings, across a
        crest of the whole-ring profile at a frame's few counts (a lattice's peak in I(q),
        its spots at one q) they hold the background beside the spots.
        """
        steps: list[_HeldBins | None] = []
        if self.rings is not None:
            steps += [_HeldBins.build(profile, self.ring_pixels, self._scope(True),
                                      RING_MATCH_PASSES,
                                      shrink=profile.bin_width != RING_BIN_PX,
                                      outright_bins=self._outright_bins(profile),
                                      scan_sum=scan_sum)
                      for profile in self.ring_levels or (self.rings,)]
        if self.arcs is not None:
            assert self.arc_pixels is not None  # for_scan builds both
            steps.append(_HeldBins.build(self.arcs, self.arc_pixels, self._scope(False),
                                         ARC_MATCH_PASSES, pooled=False))
        off_rings = self._scope(False)
        whole = (self.whole_ring_scope if self.whole_ring_scope is not None
                 else np.zeros_like(off_rings))
        lattice, spots = off_rings & ~whole, self._spot_sums.spots
        for scope, outright in ((whole, True), (lattice & ~spots, False)):
            if not scope.any():
                continue
            steps += [_HeldBins.build(profile, scope, scope, RING_MATCH_PASSES,
                                      shrink=not (outright
                                                  and profile.bin_width == RING_BIN_PX),
                                      sparse=outright,
                                      outright_bins=self._outright_bins(profile),
                                      scan_sum=scan_sum)
                      for profile in self.ring_levels]
        on_spots = lattice & spots
        if on_spots.any():  # shrunk at every scale but across a crest at a few counts
            steps += [_HeldBins.build(profile, on_spots, on_spots, RING_MATCH_PASSES,
                                      shrink=True, scan_sum=scan_sum,
                                      fit_bins=(self.crest_half_bins
                                                if profile.bin_width == SHARP_BIN_PX
                                                else None))
                      for profile in self.ring_levels]
        return tuple(step for step in steps if step is not None)

    def _outright_bins(self, profile: RingProfile) -> np.ndarray | None:
        """The bins of ``profile`` held outright though its scale is shrunk, on the 0.5 px
        profile only: the sharp half-pixel bins and those across a crest of the whole-ring
        profile (a ring's, or a lattice's spots at one q) where a frame's counts are
        few."""
        if profile.bin_width != SHARP_BIN_PX:
            return None
        found = [b for b in (self.sharp_bins, self.crest_half_bins) if b is not None]
        if not found:
            return None
        return np.logical_or.reduce(found)

    def spots(self) -> np.ndarray:
        """Bool ``(H, W)``: the spot pixels :meth:`apply` holds to the raw counts (the same
        for any denoiser: ``partners_used`` there changes only what partnered spots are held
        to, their pairs' raw means or their own raw counts)."""
        return self._spot_sums.spots

    def _scope(self, whole_ring: bool) -> np.ndarray:
        if self.ring_scope is None:
            return self.good if whole_ring else np.zeros_like(self.good)
        return self.ring_scope if whole_ring else self.good & ~self.ring_scope


def pooled_ring_means(profile: RingProfile, measured_on: np.ndarray, raw: np.ndarray,
                      neighbours: Sequence[np.ndarray] = (), *,
                      expected: np.ndarray | None = None
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The raw ring means a frame is held to: its own, pooled with its neighbours' where
    these agree with it.

    Each bin's mean over ``measured_on`` in ``raw`` is compared with the same in each
    neighbouring frame on its own: ``z² = (own - near)² / var``, with the Poisson variance
    of the difference at their mean. A bin has *changed* against that neighbour when the
    sum of z² over the :data:`POOL_WINDOW_BINS` bins either side is significant at
    :data:`POOL_CHANGE_P` (a ring that appeared, vanished, moved or grew), or its own z
    exceeds :data:`POOL_SINGLE_Z`; changed bins, grown by the window, do not take that
    neighbour. That local test has little power where bins rest on few pixels or counts,
    so a neighbour whose rings moved as a whole (a drift measured on the whole profile,
    :func:`~.ring_drift.radial_drift`; whole-ring profiles only) also does not pool where
    the move is predicted to change its mean by more than half the frame's bin noise
    (:func:`~.ring_drift.moved_bins`). Each bin's target is the mean of the frame's and the
    agreeing neighbours' means (``docs/methods.md``: drifting rings).

    Parameters
    ----------
    profile
        Ring profile (one bin width).
    measured_on
        Pixels the means are taken over.
    raw
        The frame's counts (0 off ``measured_on`` is fine).
    neighbours
        Neighbouring raw frames at the same dose (none: no pooling).
    expected
        Per bin of ``profile``, the frame's expected mean (its denoised frame's), from which
        a drift's change is predicted; default: the raw frames' mean, whose noise marks
        more bins moved than the drift moves.

    Returns
    -------
    target, dose, frames
        ``target`` and ``dose`` (frames behind the target) read back at every pixel;
        ``frames``: per bin, how many frames the target pools (1: the frame's own).
    """
    drifts = (radial_drifts(profile, measured_on, raw, neighbours)
              if profile.sectors == 1 and len(neighbours) else [])
    target, frames, _ = _pooled_bin_means(
        lambda image: profile.bin_means(image, measured_on), raw, neighbours,
        profile=profile, drifts=drifts, expected=expected)
    return profile.read_back(target), profile.read_back(frames), frames


def _pooled_bin_means(bin_means: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
                      raw: np.ndarray, neighbours: Sequence[np.ndarray], *,
                      profile: RingProfile | None = None,
                      drifts: Sequence[RadialDrift | None] = (),
                      expected: np.ndarray | None = None
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per bin: the target of :func:`pooled_ring_means`, how many frames it pools, and
    how many the local change test alone would pool (no bin left out for a drift).
    ``bin_means(image)`` gives an image's bin means and their weights on ``profile``'s
    bins; ``drifts``: per neighbour, its rings' drift against the frame's (or None), whose
    moved bins (:func:`~.ring_drift.moved_bins`, predicted from the ``expected`` bin means,
    default the mean of the frame's and its neighbours') count as changed."""
    own, weight = bin_means(raw)
    nears = [bin_means(neighbour)[0] for neighbour in neighbours]
    if expected is None and any(d is not None and d.significant for d in drifts):
        expected = (own + sum(nears)) / (1 + len(nears))
    total, frames = own.copy(), np.ones(own.shape)
    frames_local = frames.copy()
    tested = weight > 0
    width = 2 * POOL_WINDOW_BINS + 1
    for n, near in enumerate(nears):
        drift = drifts[n] if n < len(drifts) else None
        var = np.maximum(0.5 * (own + near), 0.0) / np.maximum(weight, 1e-12) * 2.0
        usable = tested & (var > 0)
        z2 = np.where(usable, (own - near) ** 2 / np.where(usable, var, 1.0), 0.0)
        window_sum = uniform_filter1d(z2, width, mode="constant") * width
        dof = np.rint(uniform_filter1d(usable.astype(np.float64), width, mode="constant")
                      * width).astype(np.int64)
        # chi2.sf(window_sum, dof) < POOL_CHANGE_P, by the level's precomputed quantiles
        significant = usable & (window_sum > _POOL_CHI2_LEVEL[np.clip(dof, 1, width)])
        changed = significant | (z2 > POOL_SINGLE_Z ** 2)
        local = ndimage.binary_dilation(changed, iterations=POOL_WINDOW_BINS) | ~usable
        if drift is not None and profile is not None and expected is not None:
            changed |= moved_bins(drift, profile, expected, weight)
        changed = ndimage.binary_dilation(changed, iterations=POOL_WINDOW_BINS) | ~usable
        total += np.where(changed, 0.0, near)
        frames += ~changed
        frames_local += ~local
    target = total / frames
    return target, frames, frames_local


#: chi2.isf(POOL_CHANGE_P, dof) for dof 0..window (index 0 unused): the window sum of z²
#: above which a bin has changed.
_POOL_CHI2_LEVEL = chi2.isf(POOL_CHANGE_P, np.arange(2 * POOL_WINDOW_BINS + 2).clip(1))


@dataclass(frozen=True)
class _HeldBins:
    """One ring hold of :meth:`RawConsistency.apply`: a profile's bins over the pixels the
    means are measured on, and the pixels scaled by them, found once per scan.

    :meth:`match` scales the frame on :attr:`index`, :attr:`passes` times, towards bin
    means over the measured pixels equal to the raw ones, pooled with the neighbouring
    frames' where the ring did not change (:func:`pooled_ring_means`) if :attr:`pooled`.
    ``sparse``: every bin with a pixel and an expected count is corrected, shrunk by its
    noise below :data:`MIN_RING_COUNTS` (radii too sparse for the isotropy tests: their
    bins are few-pixel ones, and the denoiser is most biased there).

    ``shrink``: each bin's correction is shrunk by its own Poisson noise (positive-part
    James-Stein: ``1 + (r - 1)·max(0, 1 - var(r) / (r - 1)²)``, ``var(r) ≈ 1 / (n·mean)``),
    so a bin whose denoised mean agrees with the raw one within the raw mean's noise is left
    alone, and one the denoiser got wrong by more is corrected. Fine bins hold few counts:
    scaling them to the raw means outright would put their noise back into the frame.
    """

    measured: np.ndarray  # flat bool: the pixels the means are taken over (not a copy)
    scatter: BinScatter  # (bins, measured pixels): the binning
    weights: np.ndarray  # per bin: about how many measured pixels it rests on
    held: np.ndarray  # flat bool: the pixels scaled
    #: How the held pixels read a profile back, kept where the profile keeps its taps (a
    #: small detector); on a large one made per use, so that a hold costs 1 byte a pixel.
    kept_reader: BinReader | None
    passes: int
    shrink: bool = False
    sparse: bool = False
    pooled: bool = True
    #: Per held pixel (in ``held``'s order): shrunk, where a shrunk hold holds some bins
    #: outright (the pixel reads mostly such bins: False); None: ``shrink`` everywhere.
    shrunk_at: np.ndarray | None = None
    #: Per bin (whole-ring profiles): the scan's summed counts over the measured pixels,
    #: where runs of sparse bins end (:func:`_merge_sparse_bins`); None: not known.
    scan_counts: np.ndarray | None = None
    #: Per bin: the run of bins across a crest it belongs to (1, 2, ...; 0: none), whose
    #: ratios of raw to denoised means are shrunk towards the ratio fitted across the run
    #: (:func:`_crest_fit`); None: every bin's own target.
    fit_runs: np.ndarray | None = None

    @classmethod
    def build(cls, profile: RingProfile, measured_on: np.ndarray, scope: np.ndarray,
              passes: int, *, shrink: bool = False, sparse: bool = False,
              pooled: bool = True, outright_bins: np.ndarray | None = None,
              fit_bins: np.ndarray | None = None,
              scan_sum: np.ndarray | None = None) -> _HeldBins | None:
        """The hold of ``scope`` to ``profile``'s means over ``measured_on``; None when no
        pixel has enough support (bins with fewer than :data:`MIN_RING_PIXELS` measured
        pixels are left alone unless ``sparse`` or held outright). ``outright_bins``: bins
        of a shrunk hold that are held outright (the pixels reading them mostly).
        ``fit_bins``: bins held outright to the targets of :func:`_crest_fit` (each bin's
        ratio of raw to denoised means shrunk towards the ratio fitted across its run of
        them), not to their own raw means.
        ``scan_sum``: the scan's summed frames, whose bin sums end runs of sparse bins
        (whole-ring profiles)."""
        strict = shrink and not sparse  # the minimum pixels and counts apply
        n_pixels = profile.support(measured_on)
        index = np.flatnonzero(scope & (n_pixels >= (MIN_RING_PIXELS if strict else 1.0)))
        if index.size == 0:
            return None
        scatter, weights = profile.binning(measured_on)
        held = np.zeros(n_pixels.size, bool)
        held[index] = True
        kept = profile.reader(_int32(index)) if scatter.taps is not None else None
        shrunk_at, fit_runs = None, None
        if fit_bins is not None and fit_bins.any():
            fit_runs = ndimage.label(fit_bins)[0]
            outright_bins = (fit_bins if outright_bins is None
                             else np.asarray(outright_bins, bool) | fit_bins)
        if shrink and outright_bins is not None and outright_bins.any():
            reader = kept if kept is not None else profile.reader(_int32(index))
            shrunk_at = (reader @ outright_bins.astype(np.float64)) < 0.5
        measured = measured_on.reshape(-1)
        scan_counts = None
        if scan_sum is not None and profile.sectors == 1:  # as bin_means takes a frame's
            scan_counts = scatter @ np.asarray(scan_sum).reshape(-1)[measured]
        return cls(measured=measured, scatter=scatter, weights=weights,
                   held=held, kept_reader=kept, passes=passes, shrink=shrink,
                   sparse=sparse, pooled=pooled, shrunk_at=shrunk_at,
                   scan_counts=scan_counts, fit_runs=fit_runs)

    def with_scan_change(self, change: np.ndarray) -> _HeldBins:
        """This hold with ``change`` (a frame's worth, flat or 2-D) added to the scan's
        summed counts (:meth:`RawConsistency.with_frame_replaced`)."""
        if self.scan_counts is None:
            return self
        return dataclasses.replace(self, scan_counts=self.scan_counts + self.scatter @ (
            np.asarray(change).reshape(-1)[self.measured]))

    def bin_means(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """An image's mean in each bin over the measured pixels, and the bins' weights."""
        sums = self.scatter @ np.asarray(image).reshape(-1)[self.measured]
        return sums / np.maximum(self.weights, 1e-12), self.weights

    def match(self, raw: np.ndarray, out: np.ndarray,
              neighbours: Sequence[np.ndarray] = (),
              drifts: Sequence[RadialDrift | None] = ()) -> np.ndarray:
        """``out`` (a contiguous float array) scaled towards the raw means, in place;
        returns it. ``drifts``: per neighbour, its rings' drift against ``raw``'s
        (:meth:`RawConsistency.drifts`). The per-pixel arithmetic is float32: the bins'
        means are sums over many pixels (float64), each pixel's factor needs no more."""
        strict = self.shrink and not self.sparse
        moved = self.pooled and any(d is not None and d.significant for d in drifts)
        target, dose, dose_runs = _pooled_bin_means(
            self.bin_means, raw, neighbours if self.pooled else (),
            profile=self.scatter.profile, drifts=drifts,
            expected=self.bin_means(out)[0] if moved else None)
        reader = self.kept_reader
        if reader is None:
            reader = self.scatter.profile.reader(_int32(np.flatnonzero(self.held)))
        index = reader.index
        assert index is not None  # a reader of the held pixels
        flat = out.reshape(-1)
        # A held pixel off the measured ones (a ring's pixels that failed the isotropy
        # test) takes every pass's factor, as the measured pixels at its radius do, where
        # the means converged. Where they did not (the edge of the ring scope: a bin's few
        # measured pixels share their factor with the next bin, held outright to another
        # level), the factors asked for stay large pass after pass while the means barely
        # move, and their product took such pixels past the raw level several-fold; there
        # they take the correction their bins' means received instead.
        on_means = self.measured[index]
        unmeasured = None  # (their places in index, bin means and their values before)
        if not on_means.all():
            off = np.flatnonzero(~on_means)
            unmeasured = (off, self.bin_means(out)[0], flat[index[off]].copy())
        factor: np.ndarray | None = None
        # frames' worth of measured pixels behind the target at each held pixel
        n_at = (reader @ self.weights).astype(np.float32)
        n_at *= reader @ dose
        whole_ring = self.scatter.profile.sectors == 1
        # Shrunk per pixel, except where the pixel reads mostly bins held outright.
        shrink_at = self.shrink if self.shrunk_at is None else self.shrunk_at
        for _ in range(self.passes):
            den_means = self.bin_means(out)[0]
            held_to = (target if self.fit_runs is None
                       else _crest_fit(target, den_means, self.weights * dose, self.fit_runs))
            # Runs of sparse bins are formed with the frames the local change test pools,
            # not fewer where a drift is: a ring the denoiser missed then keeps a run as
            # short as on a static scan, instead of having its raw counts spread over a
            # longer one (the bins' own targets still leave out the moved neighbours).
            merged = (_merge_sparse_bins(den_means, held_to, self.weights * dose_runs,
                                         scan_counts=self.scan_counts,
                                         scan_pixels=self.weights)
                      if whole_ring else None)
            in_run: np.ndarray | np.bool_ = np.False_
            if merged is None:
                raw_at = (reader @ held_to).astype(np.float32)
                den_at = (reader @ den_means).astype(np.float32)
                counts = den_at * n_at
            else:  # sparse radii held over runs of bins together
                group_target, group_den, support_gain = merged
                raw_at = (reader @ group_target).astype(np.float32)
                den_at = (reader @ group_den).astype(np.float32)
                counts = den_at * n_at * (reader @ support_gain).astype(np.float32)
                in_run = (reader @ (support_gain > 1.0).astype(np.float64)) > 0.5
            del den_means, merged, held_to
            # Held outright: bins with enough expected counts; the others (sparse corners,
            # low counts) are shrunk, so that a bin with a count or two is not set to it.
            # Pixels not held are scaled by exactly 1 (one gather and scatter per pass).
            enough = (counts >= (MIN_RING_COUNTS if strict else 1.0)) & (den_at > 0)
            excess = np.divide(raw_at, den_at, out=np.ones_like(den_at), where=enough)
            excess -= 1.0
            # A run of sparse bins is held outright where the bins are (its level is the
            # raw one pooled over the run, Poisson-limited and unbiased); at the scales that
            # shrink every bin, its bins are shrunk by the run's noise.
            shrunk = shrink_at | ((counts < MIN_RING_COUNTS) & ~in_run)
            noise = np.divide(np.float32(1.0), counts, out=np.zeros_like(counts),
                              where=enough)
            del counts, den_at, enough
            factor = np.where(shrunk, np.clip(
                1.0 - noise / np.maximum(excess ** 2, np.float32(1e-12)), 0.0, 1.0),
                np.float32(1.0)).astype(np.float32)
            del noise, shrunk
            factor *= excess
            factor += 1.0
            # Never below 0: a ring mean below 0 (an integrating detector's photon-
            # equivalent frame under its readout noise) takes the pixels to 0, not past it.
            # Counts' means are never negative, so for them this changes nothing.
            np.maximum(factor, 0.0, out=factor)
            flat[index] *= factor
            del raw_at
        if unmeasured is not None and factor is not None:
            off, means_before, values_before = unmeasured
            still = np.abs(factor[off] - 1.0) > UNCONVERGED_FACTOR
            if still.any():
                after = self.bin_means(out)[0]
                received = np.divide(after, means_before, out=np.ones_like(after),
                                     where=means_before > 0)
                redo = off[still]
                flat[index[redo]] = (values_before[still]
                                     * (reader @ received)[redo].astype(np.float32))
        return out


#: Terms of the raw-to-denoised ratio fitted across a crest (:func:`_crest_fit`): a
#: constant, a slope and a curvature in radius.
CREST_FIT_TERMS = 3


def _crest_fit(target: np.ndarray, den: np.ndarray, support: np.ndarray,
               runs: np.ndarray) -> np.ndarray:
    """``target`` (per bin, the raw means a frame is held to) with the bins of each run of
    ``runs`` (1, 2, ...; 0: none) held instead to the denoised means ``den`` times a
    raw-to-denoised ratio that rests on the whole run. ``support``: per bin, pixels times
    frames behind its target.

    Across the run the ratio is fitted as ``1 + a + b·t + c·t²`` in the bin's place ``t``
    (-1 to 1), by weighted least squares (Poisson: a bin's raw counts ``target · support``
    have the variance of their expectation, ``den · support``). Each bin's own ratio is
    then shrunk towards the fit by its noise (positive-part James-Stein, as
    :class:`_HeldBins` shrinks a bin's correction towards none): where a frame's counts are
    few a bin takes the fit, where they are many its own raw mean.

    A denoiser that broadens a peak a pixel or two wide lowers its crest and raises its
    flanks by a few per cent: per 0.5 px bin within a frame's noise at a few counts, so a
    correction shrunk towards none by that noise was lost, and held outright bin by bin it
    puts the noise of a bin's few counts on the peak's brightest pixels. The fit's three
    terms pool the run's counts. A run with no more bins holding counts than terms has no
    fit: its bins' ratios are shrunk towards none, as elsewhere."""
    out = np.array(target, np.float64, copy=True)
    for run in range(1, int(runs.max()) + 1):
        bins = np.flatnonzero(runs == run)
        counts = support[bins] * np.maximum(den[bins], 0.0)
        used = counts > 0
        fitted = np.zeros(bins.size)
        if np.count_nonzero(used) > CREST_FIT_TERMS:
            place = ((bins - 0.5 * (bins[0] + bins[-1]))
                     / max(0.5 * (bins[-1] - bins[0]), 1.0))
            terms = place[:, None] ** np.arange(CREST_FIT_TERMS)
            information = (terms.T * counts) @ terms
            score = terms.T @ (support[bins] * (target[bins] - den[bins]))
            fitted = terms @ np.linalg.lstsq(information, score, rcond=None)[0]
        own = np.divide(target[bins], den[bins], out=np.ones(bins.size), where=used) - 1.0
        off_fit = own - fitted
        noise = np.divide(1.0, counts, out=np.zeros(bins.size), where=used)
        keep = np.clip(1.0 - noise / np.maximum(off_fit ** 2, 1e-12), 0.0, 1.0)
        out[bins] = np.where(used, den[bins] * np.maximum(1.0 + fitted + keep * off_fit, 0.0),
                             target[bins])
    return out


#: The ring scale whose bins :func:`sharp_half_pixel_bins` may hold outright.
SHARP_BIN_PX = 0.5


def _whole_ring_level(levels: Sequence[RingProfile], width: float) -> RingProfile | None:
    """The whole-ring profile (one sector) of bin width ``width`` among ``levels``."""
    return next((p for p in levels if p.sectors == 1 and p.bin_width == width), None)


def sharp_half_pixel_bins(scan_sum: np.ndarray, good: np.ndarray,
                          levels: Sequence[RingProfile]) -> np.ndarray | None:
    """Per bin of the 0.5 px whole-ring profile among ``levels``: where the scan's summed
    counts show the radial profile sharper than the 1 px bins hold.

    The 1 px bins (each pixel shared between the two nearest, a 2 px wide triangle) hold a
    ring's profile only at their scale; a ring about 1 px wide keeps, after them, what the
    network's smoothing did below it, and the 0.5 px bins, shrunk by a frame's noise, give
    back only part of it. On the scan's sum the 0.5 px bins' means are compared with the 1 px
    profile read at their radii (linear between bin centres): a bin further than
    :data:`HALF_PIXEL_Z` of the two means' Poisson noise (the scan's counts, all frames) is
    structure the 1 px bins cannot hold; it and its neighbours are held outright. The choice
    rests on the scan, not on the frame being held, so a frame's noise does not decide where
    its own counts are taken. Returns None without both profiles.
    """
    half = _whole_ring_level(levels, SHARP_BIN_PX)
    one = _whole_ring_level(levels, RING_BIN_PX)
    if half is None or one is None:
        return None
    fine, fine_n = half.bin_means(scan_sum, good)
    coarse, coarse_n = one.bin_means(scan_sum, good)
    filled = coarse_n > 0
    if filled.sum() < 2:
        return None
    radius_fine = np.arange(fine.size) * half.bin_width
    radius_coarse = np.flatnonzero(filled) * one.bin_width
    read = np.interp(radius_fine, radius_coarse, coarse[filled])
    read_var = np.interp(radius_fine, radius_coarse,
                         np.maximum(coarse[filled], 0.0) / coarse_n[filled])
    var = np.maximum(fine, 0.0) / np.maximum(fine_n, 1e-12) + read_var
    usable = (fine_n >= MIN_RING_PIXELS) & (var > 0)
    sharp = usable & ((fine - read) ** 2 > HALF_PIXEL_Z ** 2 * np.where(usable, var, 1.0))
    return ndimage.binary_dilation(sharp, iterations=1)


#: A 1 px ring bin is a ring's crest (:func:`ring_crest_bins`) where the scan's summed counts
#: put its mean above the means :data:`CREST_BASE_BINS` bins inwards and outwards, each by
#: more than :data:`CREST_Z` standard deviations of the difference (Poisson).
CREST_Z = 3.0
CREST_BASE_BINS = 2


def ring_crest_bins(scan_sum: np.ndarray, good: np.ndarray,
                    levels: Sequence[RingProfile]) -> np.ndarray | None:
    """Per bin of the 1 px whole-ring profile among ``levels``: the crests of rings a few
    pixels wide or narrower, with the :data:`CREST_BASE_BINS` bins either side of each.

    A bin is a crest where the scan's summed counts rise to it from both sides: its mean
    exceeds the means :data:`CREST_BASE_BINS` bins inwards and outwards by more than
    :data:`CREST_Z` Poisson standard deviations each. A profile that only falls (the rise
    by a SAXS beamstop, whose innermost bins have no bins inside them) has no crest, nor has
    a ring much wider than the base. As :func:`sharp_half_pixel_bins`, the choice rests on
    the scan, not on a frame. Returns None without the 1 px profile or where no crest is
    found.
    """
    one = _whole_ring_level(levels, RING_BIN_PX)
    if one is None:
        return None
    mean, n = one.bin_means(scan_sum, good)
    usable = n >= MIN_RING_PIXELS
    var = np.where(usable, np.maximum(mean, 0.0) / np.maximum(n, 1e-12), np.inf)
    k = CREST_BASE_BINS
    if mean.size <= 2 * k:
        return None
    centre = slice(k, mean.size - k)

    def rises_from(side: slice) -> np.ndarray:
        rise = mean[centre] - mean[side]
        return (usable[centre] & usable[side] & (rise > 0)
                & (rise ** 2 > CREST_Z ** 2 * (var[centre] + var[side])))

    crest = np.zeros(mean.size, bool)
    crest[centre] = rises_from(slice(0, mean.size - 2 * k)) & rises_from(slice(2 * k, None))
    if not crest.any():
        return None
    return ndimage.binary_dilation(crest, iterations=k)


#: A ring is narrow (:func:`narrow_crest_bins`) where its FWHM on the scan's summed counts
#: is below this (px): the coarsest knot spacing of the angular model's radial spline
#: (:data:`~.angular.RADIAL_KNOTS_PX`), which cannot follow a ring narrower than it.
NARROW_RING_PX = 2.0
#: Half-width (px) of the window about a crest the ring's width is fitted over.
NARROW_WINDOW_PX = 3.0


def narrow_crest_bins(scan_sum: np.ndarray, good: np.ndarray,
                      levels: Sequence[RingProfile], crests: np.ndarray | None
                      ) -> np.ndarray | None:
    """The bins of ``crests`` (:func:`ring_crest_bins`, per 1 px bin) whose ring is narrower
    than :data:`NARROW_RING_PX`: the angular model's mix keeps the totals of each quarter
    of their shells, not only of each half (:func:`~.angular.mix_within_shells`).

    For each run of crest bins, a Gaussian on a line is fitted by weighted least squares
    (Poisson weights) to the 0.5 px profile of the scan's summed counts about the run's
    highest bin, out to the lowest bin within :data:`NARROW_WINDOW_PX` px on either side
    (a neighbouring ring beyond it stays out); its FWHM is compared with
    :data:`NARROW_RING_PX`. A fit that fails, or two rings within the window (they fit as
    one broad ring), leave the run's shells in halves, as for a broad ring. Returns None
    where no crest is narrow.
    """
    half = _whole_ring_level(levels, SHARP_BIN_PX)
    if crests is None or half is None:
        return None
    mean, n = half.bin_means(scan_sum, good)
    usable = n >= MIN_RING_PIXELS
    w = int(round(NARROW_WINDOW_PX / SHARP_BIN_PX))
    narrow = np.zeros(np.size(crests), bool)
    labels, runs = ndimage.label(np.asarray(crests, bool))
    for run in range(1, runs + 1):
        bins = np.flatnonzero(labels == run)
        # The run's bins in the 0.5 px profile (bin k of 1 px is bin 2k of 0.5 px).
        inside = np.arange(2 * bins[0], min(2 * bins[-1] + 1, mean.size))
        inside = inside[usable[inside]]
        if inside.size == 0:
            continue
        top = int(inside[np.argmax(mean[inside])])
        # The window ends at the profile's lowest bin either side of the top: a neighbouring
        # ring beyond it is left out of the fit.
        left = np.arange(max(top - w, 0), top + 1)
        right = np.arange(top, min(top + w + 1, mean.size))
        left, right = left[usable[left]], right[usable[right]]
        if left.size < 2 or right.size < 2:
            continue
        window = np.arange(int(left[np.argmin(mean[left])]),
                           int(right[np.argmin(mean[right])]) + 1)
        window = window[usable[window]]
        fwhm = _fitted_fwhm_px(window * SHARP_BIN_PX, mean[window],
                               np.maximum(mean[window], 1e-12) / n[window],
                               top * SHARP_BIN_PX)
        narrow[bins] = fwhm is not None and fwhm < NARROW_RING_PX
    return narrow if narrow.any() else None


def _fitted_fwhm_px(radius: np.ndarray, mean: np.ndarray, variance: np.ndarray,
                    centre: float) -> float | None:
    """FWHM (px) of a Gaussian on a line fitted to a profile by weighted least squares;
    None where the fit fails or finds no peak within the window."""
    if radius.size < 6:
        return None

    def model(r, amplitude, mu, sigma, offset, slope):
        return amplitude * np.exp(-0.5 * ((r - mu) / sigma) ** 2) + offset + slope * (r - centre)

    ends = float(min(mean[0], mean[-1]))
    start = (float(mean.max()) - ends, centre, 0.7, ends, 0.0)
    try:
        with warnings.catch_warnings():  # a covariance it cannot estimate is not needed
            warnings.simplefilter("ignore", optimize.OptimizeWarning)
            fit, _ = optimize.curve_fit(model, radius, mean, p0=start,
                                        sigma=np.sqrt(variance), maxfev=2000)
    except (RuntimeError, ValueError):
        return None
    amplitude, mu, sigma = fit[0], fit[1], abs(fit[2])
    if amplitude <= 0 or not radius[0] <= mu <= radius[-1] or not np.isfinite(sigma):
        return None
    return float(2.0 * np.sqrt(2.0 * np.log(2.0)) * sigma)


#: Below this many expected counts in a frame, a 0.5 px ring bin across a ring's crest is
#: held outright (:func:`low_count_crest_bins`). A bin's correction is shrunk by its
#: Poisson noise (positive-part James-Stein), which keeps 1 - 1 / (N b²) of a relative
#: correction b on N counts: above 400 counts at least three quarters of a 10 % one, so
#: there the shrunk hold keeps a ring's width and copies less of the frame's noise.
CREST_OUTRIGHT_COUNTS = 400.0


def low_count_crest_bins(scan_sum: np.ndarray, good: np.ndarray,
                         levels: Sequence[RingProfile], crests: np.ndarray | None, *,
                         frames: int = 1) -> np.ndarray | None:
    """Per bin of the 0.5 px whole-ring profile among ``levels``: the bins across a ring's
    crest (:func:`crest_half_pixel_bins` of ``crests``) where a frame's expected counts
    (the scan's over ``frames``) are below :data:`CREST_OUTRIGHT_COUNTS`, held outright.

    There the bins' corrections, shrunk by a frame's noise, would give back only part of
    what the network's smoothing took off a ring about a pixel wide (sharp rings at 0.1
    counts/pixel on 128² scans of three frames: fitted FWHM 2.9 % wider than raw's without
    these bins held, 0.7 % with them, ``bench.bias``); with more counts the shrunk hold
    keeps the width and copies less of the frame's noise (every crest bin held outright,
    an in situ frame at 1 count/pixel lost 0.36 dB at a fixed number of training steps,
    with this rule 0.01 dB; a powder frame 0.04 and 0.17 dB: ``bench.heldout --steps``).
    The choice rests on the scan's counts. Returns None where none.
    """
    found = half_pixel_frame_counts(scan_sum, good, levels, frames=frames)
    if found is None or crests is None:
        return None
    per_frame, pixels = found
    held = crest_half_pixel_bins(crests, per_frame.size) & (pixels > 0) & (
        per_frame < CREST_OUTRIGHT_COUNTS)
    return held if held.any() else None


def half_pixel_frame_counts(scan_sum: np.ndarray, good: np.ndarray,
                            levels: Sequence[RingProfile], *, frames: int = 1
                            ) -> tuple[np.ndarray, np.ndarray] | None:
    """Per bin of the 0.5 px whole-ring profile among ``levels``: a frame's expected counts
    (the scan's over ``frames``) and the good pixels behind the bin; None without it."""
    half = _whole_ring_level(levels, SHARP_BIN_PX)
    if half is None:
        return None
    means, pixels = half.bin_means(scan_sum, good)
    return np.maximum(means, 0.0) * pixels / max(int(frames), 1), pixels


def crest_half_pixel_bins(crests: np.ndarray, n_bins: int) -> np.ndarray:
    """Per bin of a 0.5 px whole-ring profile of ``n_bins`` bins: whether it lies within
    half a pixel of a 1 px bin in ``crests`` (:func:`ring_crest_bins`).

    Half-pixel bin ``j`` is centred on radius ``j / 2`` and 1 px bin ``k`` on radius ``k``,
    so ``j`` lies within half a pixel of bins ``j // 2`` and ``(j + 1) // 2``.

    Where a frame's counts are few, these bins are held outright
    (:func:`low_count_crest_bins`); elsewhere (backgrounds, a SAXS fall, crests with many
    counts) the half-pixel bins stay shrunk.
    """
    j = np.arange(n_bins)
    padded = np.append(np.asarray(crests, bool), False)
    last = padded.size - 1
    return padded[np.minimum(j // 2, last)] | padded[np.minimum((j + 1) // 2, last)]


def _merge_sparse_bins(den: np.ndarray, target: np.ndarray, support: np.ndarray, *,
                       scan_counts: np.ndarray | None = None,
                       scan_pixels: np.ndarray | None = None
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Radial bins too sparse to be held alone, held together with their neighbours.

    Where a radius has few pixels or counts (the detector's corners, beyond the outermost
    ring, at low counts), a bin's expected counts ``den * support`` stay below
    :data:`MIN_RING_COUNTS` and its correction is shrunk to nothing: the denoiser's output
    there is left as it is, and both the network and the classical mode leave a floor there
    (3-5 times the truth beyond a sharp outer ring at 0.1-0.25 counts/pixel), which the
    full-ring I(q) then carries. Consecutive sparse bins are merged, in radial order, until
    a run holds :data:`MIN_RING_COUNTS` expected counts (a bin with enough counts of its own
    is never merged, so a ring is never pooled with the background beside it); the runs
    depend on the denoised frame, not on the frame's raw noise. Where the denoiser missed a
    ring (a corner ring at 0.1 counts/pixel: its expected counts flat across it), its bins
    are sparse too; given the scan's summed counts per bin (``scan_counts`` over
    ``scan_pixels`` pixels), a run also ends before a bin whose mean there differs from the
    run's by more than :data:`RUN_BREAK_Z` (Poisson, two-sample), so the ring's counts are
    not spread over the background beyond it (``bench.iq``, sharp rings at 0.1
    counts/pixel). That choice rests on the scan, not on the frame. On an integrating
    detector's photon-equivalent sums the readout noise adds variance the test leaves out,
    so it ends runs more often there: shorter runs, each still held to its raw level. At the
    scale held outright (1 px), a run's pixels are held to the run's raw mean, pooled over
    the neighbouring frames where they agree: there the full-ring I(q) is raw's,
    Poisson-limited and unbiased, where it carried the denoiser's floor; at the scales that
    shrink each bin by its noise, the run's noise is used. (Shrinking all runs together,
    positive-part James-Stein over the vector of runs, was tried and measured: it left the
    sharp rings at 0.1 counts/pixel above raw, ``bench.iq``.)

    Returns per bin the (merged) raw target, the (merged) denoised mean and the factor by
    which a bin's support grows in its run; None if no bin is merged.
    """
    counts = den * support
    sparse = (support > 0) & (counts < MIN_RING_COUNTS)
    if int(sparse.sum()) < 2:
        return None
    group = np.full(len(den), -1)
    runs = 0
    open_run = False
    total = 0.0
    run_counts = run_pixels = 0.0  # the open run's scan counts and pixels
    if scan_counts is None or scan_pixels is None:  # no pixels: no run ends early
        scan_counts = scan_pixels = np.zeros(len(den))
    for b in np.flatnonzero(support > 0):
        if not sparse[b]:
            open_run, total = False, 0.0  # a run never spans a bin held on its own
            continue
        if open_run and _scan_mean_changes(run_counts, run_pixels, float(scan_counts[b]),
                                           float(scan_pixels[b])):
            open_run, total = False, 0.0
        if not open_run:
            runs += 1
            open_run = True
            run_counts = run_pixels = 0.0
        group[b] = runs - 1
        total += float(counts[b])
        run_counts += float(scan_counts[b])
        run_pixels += float(scan_pixels[b])
        if total >= MIN_RING_COUNTS:
            open_run, total = False, 0.0
    member = group >= 0
    sizes = np.bincount(group[member], minlength=runs)
    if not (sizes > 1).any():
        return None
    weight = support[member]
    run_support = np.bincount(group[member], weights=weight, minlength=runs)
    safe = np.maximum(run_support, 1e-300)
    run_target = np.bincount(group[member], weights=target[member] * weight,
                             minlength=runs) / safe
    run_den = np.bincount(group[member], weights=den[member] * weight, minlength=runs) / safe
    group_target, group_den = target.astype(np.float64), den.astype(np.float64)
    gain = np.ones(len(den))
    grown = member.copy()
    grown[member] = sizes[group[member]] > 1
    group_target[grown] = run_target[group[grown]] * _shape_in_runs(
        group, grown, den, scan_counts, scan_pixels, runs)
    group_den[grown] = run_den[group[grown]]
    gain[grown] = run_support[group[grown]] / np.maximum(support[grown], 1e-300)
    return group_target, group_den, gain


def _shape_in_runs(group: np.ndarray, grown: np.ndarray, den: np.ndarray,
                   scan_counts: np.ndarray, scan_pixels: np.ndarray, runs: int
                   ) -> np.ndarray:
    """How a run's raw level is shared among its bins, relative to the denoised shape: per
    bin of ``grown``, the factor by which its target differs from the run's.

    A bin's share of the run is its share of the run's scan counts, with the denoised
    frame's share (``pi_b``: its expected counts over the run's) as a prior worth
    :data:`MIN_RING_COUNTS` counts: ``(C_b + k pi_b) / (C_R + k)``; the factor is that share
    over ``pi_b`` (both over the bin's share of the pixels, which cancels). Where the scan
    holds few counts in the run the denoised shape stands (as it did alone before); where it
    holds many, the counts place them: a corner's last bins with no count in any frame are
    no longer raised to the shape the coarser holds gave the ring's flank before them
    (``bench.iq``, sharp rings at 0.1 counts/pixel).
    """
    index = group[grown]
    counts = np.maximum(scan_counts[grown].astype(np.float64), 0.0)
    expected = (np.maximum(den[grown].astype(np.float64), 0.0)
                * np.maximum(scan_pixels[grown].astype(np.float64), 0.0))
    run_counts = np.bincount(index, weights=counts, minlength=runs)
    run_expected = np.bincount(index, weights=expected, minlength=runs)
    k = MIN_RING_COUNTS
    prior = np.divide(expected, run_expected[index], out=np.zeros_like(expected),
                      where=run_expected[index] > 0)
    share = (counts + k * prior) / (run_counts[index] + k)
    return np.divide(share, prior, out=np.ones_like(share), where=prior > 0)


def _scan_mean_changes(run_counts: float, run_pixels: float, counts: float,
                       pixels: float) -> bool:
    """Whether a bin's mean in the scan's summed counts (``counts`` over ``pixels``) differs
    from a run's (``run_counts`` over ``run_pixels``) beyond chance at the two-sided level
    of :data:`RUN_BREAK_Z` standard deviations.

    The test is the exact one for two Poisson counts: given their total, the bin's share
    is binomial with the bin's share of the pixels. A Gaussian z of a few counts is not:
    a one-pixel corner bin with two counts where the run expects 0.2 was a "3 σ" change,
    and the short run beyond such a false break on the detector's last radii was held to a
    few pixels' counts (``bench.iq``, the drifting in situ scene at 0.1 counts/pixel); it
    is not a change at the exact level. Counts below 0 (an integrating detector's
    photon-equivalent sums) are taken as 0.
    """
    if run_pixels <= 0 or pixels <= 0:
        return False
    counts, run_counts = max(counts, 0.0), max(run_counts, 0.0)
    total = counts + run_counts
    if total <= 0:
        return False
    share = pixels / (pixels + run_pixels)
    # P(X >= counts) and P(X <= counts) for X ~ Binomial(total, share), continued to
    # non-integer counts by the regularized incomplete beta function.
    above = special.betainc(counts, total - counts + 1.0, share) if counts > 0 else 1.0
    below = (special.betainc(total - counts, counts + 1.0, 1.0 - share)
             if counts < total else 1.0)
    return bool(min(above, below) < _RUN_BREAK_P)


def _int32(index: np.ndarray) -> np.ndarray:
    """Flat indices as int32 where they fit (half the bytes of int64)."""
    return index.astype(np.int32) if index.size and index.max() < np.iinfo(np.int32).max \
        else index


def _match_means(profile: RingProfile, measured_on: np.ndarray, scope: np.ndarray,
                 raw: np.ndarray, out: np.ndarray, passes: int, *,
                 shrink: bool = False, neighbours: Sequence[np.ndarray] = (),
                 sparse: bool = False) -> np.ndarray:
    """Scale ``out`` on ``scope``, ``passes`` times, towards ``profile``'s means over
    ``measured_on`` equal to the raw ones (one-off :class:`_HeldBins`)."""
    held = _HeldBins.build(profile, measured_on, scope, passes, shrink=shrink, sparse=sparse)
    return out if held is None else held.match(raw, np.array(out, np.float64), neighbours)


@dataclass(frozen=True)
class SpotSums:
    """Counts summed at the spot scale, over a fixed set of spot pixels.

    The sum at a spot pixel is the Gaussian-weighted (σ = :data:`FEATURE_SIGMA_PX`, to 3 σ)
    sum of the values on the spot pixels around it: ``scipy.ndimage.gaussian_filter`` of an
    image that is zero off the spots. Where spots are a few per cent of the detector it is
    one sparse product over the spot pixels; where they are many, the filter itself.

    Attributes
    ----------
    spots
        Bool ``(H, W)``: the spot pixels.
    index
        Flat indices of the spot pixels.
    weights
        Sparse ``(n, n)`` Gaussian weights between them, or None (the filter is used).
    """

    spots: np.ndarray
    index: np.ndarray
    weights: sparse.csr_matrix | None
    #: Per spot pixel (in the order of :attr:`index`), its spot: the connected region of
    #: :attr:`spots` it lies in (0 to ``labels.max()``).
    labels: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    #: Above this fraction of spot pixels the whole-frame filter is the faster way.
    SPARSE_UP_TO = 0.05
    #: Above this many spot pixels the sparse weights (49 a pixel, about 600 bytes) would
    #: cost more memory than a 4 Mpx scan can spare: the filter is used.
    SPARSE_MAX_PIXELS = 1 << 16

    @classmethod
    def for_pixels(cls, spots: np.ndarray) -> SpotSums:
        """The spot-scale sums over the True pixels of ``spots``."""
        index = np.flatnonzero(spots)
        labelled, _ = ndimage.label(spots, structure=np.ones((3, 3)))
        labels = labelled.reshape(-1)[index].astype(np.int64) - 1
        if (index.size > cls.SPARSE_UP_TO * spots.size
                or index.size > cls.SPARSE_MAX_PIXELS):
            return cls(spots=spots, index=index, weights=None, labels=labels)
        shape = spots.shape
        rows, cols = np.unravel_index(index, shape)
        n = index.size
        number = np.full(shape, -1, dtype=np.int64)
        number[rows, cols] = np.arange(n)
        radius = int(3.0 * FEATURE_SIGMA_PX + 0.5)  # as gaussian_filter(truncate=3)
        offsets = np.arange(-radius, radius + 1)
        kernel = np.exp(-0.5 * (offsets / FEATURE_SIGMA_PX) ** 2)
        kernel /= kernel.sum()
        targets, sources, values = [], [], []
        for dr, k_r in zip(offsets, kernel, strict=True):
            for dc, k_c in zip(offsets, kernel, strict=True):
                r, c = rows + dr, cols + dc
                inside = (r >= 0) & (r < shape[0]) & (c >= 0) & (c < shape[1])
                source = np.full(n, -1, dtype=np.int64)
                source[inside] = number[r[inside], c[inside]]
                hit = source >= 0
                targets.append(np.flatnonzero(hit))
                sources.append(source[hit])
                values.append(np.full(int(hit.sum()), k_r * k_c))
        weights = sparse.csr_matrix(
            (np.concatenate(values), (np.concatenate(targets), np.concatenate(sources))),
            shape=(n, n))
        return cls(spots=spots, index=index, weights=weights, labels=labels)

    def _sum(self, values: np.ndarray) -> np.ndarray:
        if self.weights is not None:
            return self.weights @ values
        image = np.zeros(self.spots.shape, np.float32)
        image.reshape(-1)[self.index] = values
        summed = ndimage.gaussian_filter(image, FEATURE_SIGMA_PX, mode="constant",
                                         truncate=3.0)
        return summed.reshape(-1)[self.index].astype(np.float64)

    def sums(self, image: np.ndarray) -> np.ndarray:
        """``image``'s spot-scale sums at the spot pixels (in the order of :attr:`index`)."""
        return self._sum(np.asarray(image).reshape(-1)[self.index])

    def pooled_sums(self, target: np.ndarray, neighbours: Sequence[np.ndarray], *,
                    variance_scale: np.ndarray | float = 1.0) -> np.ndarray:
        """``target``'s spot-scale sums pooled with its neighbouring frames' where a spot
        agrees with them.

        Per neighbour and spot pixel, ``z² = (own - near)² / (Σk² · (own + near) · scale)``
        (the Poisson variance of the difference of two Gaussian-weighted sums, ``Σk²`` the
        kernel's squared weights; ``variance_scale`` ½ where the targets are the means of
        a spot's and its partner's counts); a spot (:attr:`labels`) with any pixel beyond
        :data:`POOL_SINGLE_Z` has changed against that neighbour (it appeared, vanished,
        moved or grew) and keeps its own sums, as the rings do
        (:func:`pooled_ring_means`). The others take the mean over the frame and the
        neighbours it agrees with: on a static scan a spot's intensity then rests on
        several frames' counts, not on one frame's noise.

        ``Σk²`` is the whole kernel's, while a sum runs over the spot's pixels only: on a
        spot smaller than the kernel the variance is underestimated, so the test marks a
        change sooner and pools less, never more. In the engine's units the variance is
        the level (counts; for integrating detectors the shifted photon-equivalent,
        :meth:`~.detector_noise.NoiseCalibration.to_photons`)."""
        own = np.maximum(self.sums(target), 0.0)
        total, frames = own.copy(), np.ones_like(own)
        n_spots = int(self.labels.max()) + 1 if self.labels.size else 0
        for neighbour in neighbours:
            near = np.maximum(self.sums(neighbour), 0.0)
            var = _SPOT_KERNEL_SQUARED * np.maximum(own + near, 1e-12) * variance_scale
            changed_pixel = (own - near) ** 2 > POOL_SINGLE_Z ** 2 * var
            changed = np.bincount(self.labels, weights=changed_pixel.astype(np.float64),
                                  minlength=n_spots)[self.labels] > 0
            total += np.where(changed, 0.0, near)
            frames += ~changed
        return total / frames

    def match(self, raw: np.ndarray, out: np.ndarray, *,
              passes: int = FEATURE_MATCH_PASSES,
              target_sums: np.ndarray | None = None) -> np.ndarray:
        """``out`` scaled on the spots towards spot-scale sums equal to the raw ones (or to
        ``target_sums``, in the order of :attr:`index`: :meth:`pooled_sums`), in
        ``passes`` multiplicative passes."""
        out = out.copy()
        flat = out.reshape(-1)
        # A floor, so that a spot the network erased entirely still takes the raw counts.
        values = np.maximum(flat[self.index], 1e-6)
        # An integrating detector's photon-equivalent frame can sum to 0 or less where the
        # readout noise dominates: a negative target would flip the values' sign and the
        # passes then divide by sums near 0 (a pixel once came out 10^4 times its level).
        # Counts never sum below 0, so for them this changes nothing.
        raw_sum = np.maximum(self.sums(raw) if target_sums is None else target_sums, 0.0)
        for _ in range(passes):
            den_sum = self._sum(values)
            values *= np.divide(raw_sum, den_sum, out=np.ones_like(raw_sum),
                                where=den_sum > 0)
        flat[self.index] = values
        return out


def radial_background(rings: RingProfile, image: np.ndarray, good: np.ndarray, *,
                      passes: int = 3) -> np.ndarray:
    """The smooth radial background of ``image``: its ring means without the spots.

    Starting from the ring mean, pixels more than 3 Poisson standard deviations (plus one
    count) above the current background are set aside as spots and the mean of the rest is
    taken again, ``passes`` times, so that the wings of strong spots leave it too. Radii with
    no pixel left keep the previous mean.

    Parameters
    ----------
    rings
        Whole-ring profile about the beam centre.
    image
        A scan's summed counts.
    good
        Pixels that hold data.
    passes
        Rounds of setting spots aside.

    Returns
    -------
    numpy.ndarray
        Float64 ``(H, W)``, the background at each pixel's radius.
    """
    background, _ = rings.mean(image, good)
    for _ in range(passes):
        quiet = good & (image <= background + 3.0 * np.sqrt(np.maximum(background, 0.0)) + 1.0)
        mean, support = rings.mean(image, quiet)
        background = np.where(support > 0, mean, background)
    return background


def local_excess(image: np.ndarray, good: np.ndarray, *, z_threshold: float = EXCESS_Z,
                 boxes: tuple[int, int, int] = EXCESS_BOXES,
                 grow: int = FEATURE_GROW_PX,
                 background: np.ndarray | None = None,
                 background_error: float = EXCESS_BACKGROUND_ERROR) -> np.ndarray:
    """Pixels of spots: a box whose counts exceed its surroundings' level significantly.

    The counts in a ``boxes[0]``-pixel box are compared with the level of the frame between
    the ``boxes[1]`` and ``boxes[2]`` boxes around it (Poisson variance of the box plus the
    uncertainty of the level); where the excess passes ``z_threshold`` the box's centre is
    marked. The test is then made again with the level taken over the frame's pixels off the
    marks found (grown by ``grow``), so that a strong spot in a weak one's frame does not
    raise its level: a weak one-sided satellite a few pixels from its Bragg spot is found
    (``bench/bias.py``, ``--scene lattice_one_sided``). The marks of both rounds are grown
    by ``grow`` pixels to take in the wings. With a
    ``background`` shape, the frame's counts are carried to the box in proportion to it
    (box expected = frame counts × box background / frame background), so a steep smooth
    background (a SAXS curve by the beamstop) is not taken for a spot.

    Parameters
    ----------
    image
        A scan's summed counts (or one frame).
    good
        Pixels that hold data.
    background
        Shape of the smooth background, ``(H, W)`` non-negative (e.g.
        :func:`radial_background`); None: flat.
    background_error
        Error allowed for the ``background`` model, as a fraction of the correction it makes
        to the flat expectation (added to the Poisson variance): next to the beamstop, where
        the frame holds thousands of counts and the SAXS curve falls tenfold across it, the
        model's few per cent would otherwise pass for spots; where the background is flat
        the test keeps its full sensitivity.

    Returns
    -------
    numpy.ndarray
        Bool ``(H, W)``, within ``good``.
    """
    floor = None
    if background is not None:  # a floor keeps empty radii from dividing by zero
        level = float(np.maximum(np.asarray(background)[good], 0.0).mean()) \
            if good.any() else 0.0
        floor = 1e-3 * max(level, 1e-12) if good.any() else 1.0
    if image.size <= TAPS_KEPT_UP_TO:
        return _local_excess(image, good, background, floor, np.float64,
                             z_threshold=z_threshold, boxes=boxes, grow=grow,
                             background_error=background_error)
    # A large detector in float32, in bands of rows whose halo covers both rounds' boxes and
    # growths (exact; the transients are a band's).
    marked = np.zeros(good.shape, bool)
    reach = 2 * (boxes[2] // 2 + grow) + 1  # two rounds of boxes, each grown
    for own, read, kept in row_bands(good.shape[0], reach, BAND_ROWS):
        band = _local_excess(np.asarray(image[read], np.float32), good[read],
                             None if background is None
                             else np.asarray(background[read], np.float32),
                             floor, np.float32, z_threshold=z_threshold, boxes=boxes,
                             grow=grow, background_error=background_error)
        marked[own] = band[kept]
    return marked


def _local_excess(image: np.ndarray, good: np.ndarray, background: np.ndarray | None,
                  floor: float | None, dtype: type[np.floating], *, z_threshold: float,
                  boxes: tuple[int, int, int], grow: int, background_error: float
                  ) -> np.ndarray:
    """:func:`local_excess` of an image (or a band of rows), in ``dtype``."""
    box, inner, outer = boxes
    zero = dtype(0)
    counts = np.where(good, image, zero).astype(dtype, copy=False)
    if background is None or floor is None:
        weight = good.astype(dtype)
    else:
        weight = np.where(good, np.maximum(np.asarray(background, dtype), dtype(floor)), zero)

    def box_sum(values: np.ndarray, size: int) -> np.ndarray:
        return ndimage.uniform_filter(values, size, mode="constant") * size * size

    def frame_sum(values: np.ndarray) -> np.ndarray:
        return box_sum(values, outer) - box_sum(values, inner)

    # "weight": the background the box and its frame expect (for a flat one, their pixels).
    pixels = good.astype(dtype)
    in_counts, in_weight, in_pixels = box_sum(counts, box), box_sum(weight, box), box_sum(
        pixels, box)

    def excess(quiet: np.ndarray) -> np.ndarray:
        """Boxes whose counts pass the test against the level of their frame's ``quiet``
        pixels."""
        frame_counts = frame_sum(np.where(quiet, counts, zero))
        frame_weight = frame_sum(np.where(quiet, weight, zero))
        frame_pixels = frame_sum(quiet.astype(dtype))
        usable = (good & (frame_pixels > 0.5 * (outer ** 2 - inner ** 2) / 2)
                  & (frame_weight > 0))
        level = np.divide(frame_counts, frame_weight, out=np.zeros_like(frame_counts),
                          where=usable)
        expected = level * in_weight
        # The model's error: a fraction of the correction it made to the flat expectation.
        flat = frame_counts * np.divide(in_pixels, frame_pixels,
                                        out=np.zeros_like(frame_pixels), where=usable)
        variance = (expected + in_weight ** 2 * np.divide(level, frame_weight,
                                                          out=np.zeros_like(level),
                                                          where=usable)
                    + (background_error * (expected - flat)) ** 2)
        z = (in_counts - expected) / np.sqrt(np.maximum(variance, 0.0) + 1.0)
        return usable & (z > z_threshold)

    marked = excess(good)
    # Again with the spots found set aside from the frames: a weak spot a few pixels from a
    # strong one (a one-sided satellite by its Bragg spot) is measured against the
    # background, not against the strong spot's counts in its frame.
    if marked.any():
        found = ndimage.binary_dilation(marked, iterations=grow) & good
        marked |= excess(good & ~found)
    return ndimage.binary_dilation(marked, iterations=grow) & good
