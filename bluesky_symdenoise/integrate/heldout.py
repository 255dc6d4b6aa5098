"""The denoised I(q) checked against raw on the scan itself: calibrated sigmas, and where to
fall back to raw.

A frame of Poisson counts splits into two independent halves A and B with the same
expectation (binomial thinning, p = 0.5, :func:`~bluesky_symdenoise.denoise.selection.
binomial_split`). The denoiser sees each half alone. A raw half's I(q) is unbiased,
independent of the other half's denoised I(q), and its variance V is known, so per q bin

    E[(I_den(A) - I_raw(B))²] = MSE_half + V                       (1)
    E[(I_den(A) - I_den(B))²] / 2 = Var_half                          (2)
    E[(I_den(A) - I_raw(B))² - (I_raw(A) - I_raw(B))²] = MSE_half - V  (3)

(and the same with A and B swapped): (1) is the denoised I(q)'s mean squared error at half
dose, bias included; (2) its variance alone (the two halves share the bias and not the
noise), so MSE_half - Var_half is the squared bias; (3) says whether it is worse than raw.
All are single-bin χ²-like numbers, so they are pooled: over the frames split (independent
replicates) and over blocks of ``block`` neighbouring q bins (the sigma's ratio over centred
windows of q bins, bin by bin).

Sigma: from half to full dose the variance halves and the bias is taken to stay (a
denoiser's bias shrinks with dose, if anything), so in units of raw's full-dose variance

    ratio = (2 * MSE_half - Var_half) / V      (V: a raw half's variance at the denoised rate)

with the squared bias MSE_half - Var_half pooled wider (:data:`BIAS_BLOCKS` blocks: it is
as noisy as raw) and kept with its sign (its noise averages out; only where it would take
the ratio below :data:`BIAS_FLOOR` times the variance part is it stopped there), floored
at :data:`RATIO_FLOOR`, and the denoised sigma is ``sqrt(ratio)`` times raw's
Poisson sigma at the denoised rate.

A sector's squared bias borrows from the full ring's. Its own estimate carries the noise of
raw's I(q) in the sector (a product of the two raw halves' errors: per bin of the order of
raw's variance itself, so over a window of 42 bins and 3 frames of the order of 1/√126 ≈ 0.1
of it), often more than the bias itself; the full ring's is measured on all the pixels (12
times a 30° sector's). Where the pattern is isotropic, the sector's bias relative to its
intensity is the ring's, so the ring's squared bias, carried to the sector's q bins and
scaled by the squared ratio of their denoised intensities, is the sector's prior. The
sector's own estimate is shrunk towards it by the positive-part James-Stein rule, ``prior +
max(0, 1 - n² / d²) · d`` with ``d`` its difference from the prior and ``n²`` its noise (the
frame-to-frame scatter of its window means, pooled over the profile): kept where it differs
from the prior beyond its noise (a texture the denoiser smooths along the ring biases a
sector and not the ring), the prior's elsewhere. With one frame split, the noise is not
measured and the sector's own estimate is used.

Fallback: the block sums S of (3) are tested against their own noise, measured on the same
scan (the frame-to-frame scatter of the block sums, normalised, pooled over blocks by a low
quantile); a block whose z = S / noise exceeds ``z_alarm`` falls back to raw (the denoised
I(q) and its sigma replaced by raw's there).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.ndimage import uniform_filter1d
from scipy.stats import chi2

from ..denoise.selection import binomial_split
from .azimuthal import AzimuthalIntegration, IntegrationResult

__all__ = ["BIAS_FLOOR", "IqCheck", "RATIO_FLOOR", "Z_ALARM", "held_out_iq"]

#: Smallest MSE ratio (denoised over raw) a sigma is given.
RATIO_FLOOR = 0.02
#: A block of q bins falls back to raw when the denoised half is worse beyond this z.
Z_ALARM = 3.0
#: Quantile over blocks of the normalised frame-to-frame scatter that measures the check's
#: noise (a low one: blocks where the denoiser is worse scatter more, and may be many).
NOISE_QUANTILE = 0.25
#: A negative pooled squared bias (its noise) may take the ratio down to this fraction of
#: the variance part, not below. Clipping the pool at 0 instead kept its positive noise and
#: not its negative, and so overstated the sigmas most where the denoiser's variance is
#: far below raw's.
BIAS_FLOOR = 0.5
#: Width, in blocks, of the centred window that pools the squared bias of the sigma's ratio.
BIAS_BLOCKS = 7
#: q bins per block of the check.
BLOCK = 6


@dataclass(frozen=True)
class IqCheck:
    """What a held-out split says about one I(q) profile (full ring or one sector).

    Attributes
    ----------
    q_nm
        Bin centres (the profile's radial axis).
    ratio
        Per bin: the denoised I(q)'s mean squared error over raw's variance, at full dose
        (pooled, floored; NaN on empty bins).
    fallback
        Per bin: True where the denoised I(q) is worse than raw beyond the check's noise.
    z
        Per bin: the z of its block (denoised worse than raw; > ``z_alarm`` falls back).
    frames
        Frames split.
    block
        q bins per block.
    z_alarm
        The threshold used.
    noise
        The check's own noise, measured: ``kappa`` (mean square of the normalised
        differences) and ``rho`` (their correlation between neighbouring bins); with two
        frames or more, ``bias_noise`` (the squared bias's noise over its window, in units
        of raw's variance) and, for a sector shrunk towards the full ring, ``bias_kept``
        (the mean weight its own squared bias kept: 0 all the ring's, 1 all its own).
    """

    q_nm: np.ndarray
    ratio: np.ndarray
    fallback: np.ndarray
    z: np.ndarray
    frames: int
    block: int
    z_alarm: float
    noise: dict

    def apply(self, raw: IntegrationResult, denoised: IntegrationResult
              ) -> tuple[np.ndarray, np.ndarray]:
        """The published denoised I(q) and sigma of one frame.

        Parameters
        ----------
        raw
            The frame's raw I(q) with its Poisson sigma.
        denoised
            The denoised frame's I(q), with the Poisson sigma of the denoised rate
            (``integrate(denoised, variance=denoised)``): raw's error at that rate.
        """
        if len(raw.intensity) != len(self.ratio) or raw.sigma is None or denoised.sigma is None:
            raise ValueError("apply() needs the check's binning, raw's sigma and the denoised "
                             "rate's sigma")
        intensity = np.where(self.fallback, raw.intensity, denoised.intensity)
        sigma = np.where(self.fallback, raw.sigma, np.sqrt(self.ratio) * denoised.sigma)
        return intensity, sigma

    def ranges(self) -> list[tuple[float, float]]:
        """q ranges (first and last bin centre) that fall back to raw."""
        out, start = [], None
        for k, flag in enumerate([*self.fallback, False]):
            if flag and start is None:
                start = k
            elif not flag and start is not None:
                out.append((float(self.q_nm[start]), float(self.q_nm[k - 1])))
                start = None
        return out

    def summary(self) -> dict:
        """JSON-safe record for provenance."""
        finite = self.ratio[np.isfinite(self.ratio)]
        return {
            "frames_split": self.frames, "block_bins": self.block, "z_alarm": self.z_alarm,
            "fallback_fraction": round(float(self.fallback.mean()), 4),
            "fallback_q_ranges_nm^-1": [[round(lo, 4), round(hi, 4)]
                                        for lo, hi in self.ranges()],
            "fallback_max_z": (round(float(self.z[self.fallback].max()), 2)
                               if self.fallback.any() else None),
            "mse_ratio_median": round(float(np.median(finite)), 4) if finite.size else None,
            "noise": {k: round(float(v), 4) for k, v in self.noise.items()},
        }


def held_out_iq(denoise: Callable[[np.ndarray, int, int], np.ndarray],
                frames: Sequence[np.ndarray], integration: AzimuthalIntegration, *,
                npt: int, sectors: Sequence[tuple[float, float] | None] = (None,),
                unit: str = "q_nm^-1", seed: int = 1, block: int = BLOCK,
                z_alarm: float = Z_ALARM, ring_prior: bool = True) -> list[IqCheck]:
    """Split each frame, denoise one half, and score its I(q) against the other's.

    Parameters
    ----------
    denoise
        ``denoise(half, index, which)``: the expected counts of ``half``, half ``which``
        (0 or 1) of ``frames[index]``, made exactly as the frames served are made (same
        engine, same count preservation). Neighbouring frames it uses are thinned like the
        frame, half ``which`` of each to half ``which``, so that the two denoised halves
        share no counts.
    frames
        Raw frames of counts (the scan's bad pixels zeroed); a few independent ones (e.g. the
        warm-up frames) make the check less noisy.
    integration
        The integrator (geometry and mask) the published I(q) uses.
    npt, sectors, unit
        The published profiles' binning: one check per sector (None: the full ring).
    seed
        Seed of the splits (frame ``i`` uses ``seed + i``).
    block
        q bins pooled per block.
    z_alarm
        A block falls back to raw above this z.
    ring_prior
        Shrink each sector's squared bias towards the full ring's (module docstring); the
        full ring is checked too when ``sectors`` lacks it. False: each profile alone.

    Returns
    -------
    list of IqCheck
        One per entry of ``sectors``.
    """
    if len(frames) == 0:
        raise ValueError("held_out_iq needs at least one frame")
    profiles = list(sectors)
    if ring_prior and any(s is not None for s in profiles) and None not in profiles:
        profiles.append(None)
    # Per profile, the four terms' per-frame profiles, and the denoised halves' I(q).
    totals: list[list[list[np.ndarray]]] = [[[], [], [], [], []] for _ in profiles]
    q: list[np.ndarray] = [np.empty(0)] * len(profiles)
    for index, frame in enumerate(frames):
        halves = binomial_split(frame, seed + index)
        estimates = [np.asarray(denoise(h.astype(np.float32), index, which), np.float64)
                     for which, h in enumerate(halves)]
        for which, sector in enumerate(profiles):
            den = [integration.integrate(e, npt=npt, sector=sector, unit=unit,
                                         variance=np.maximum(e, 0.0)) for e in estimates]
            i_a, i_b = (integration.integrate(h, npt=npt, sector=sector, unit=unit).intensity
                        for h in halves)
            # A raw half's variance at the denoised rate; (1) both ways; (2); (3). The raw
            # half's variance is taken out of (1) as measured, (i_a - i_b)² / 2, not as
            # pyFAI propagates it (v, the units of the ratio): a propagated variance a few
            # per cent off would pass for a bias of the denoiser.
            sigma_a, sigma_b = den[0].sigma, den[1].sigma
            assert sigma_a is not None and sigma_b is not None  # variance= was propagated
            v = 0.5 * (sigma_a ** 2 + sigma_b ** 2)
            u = 0.5 * ((den[0].intensity - i_b) ** 2 + (den[1].intensity - i_a) ** 2)
            spread = 0.5 * (den[0].intensity - den[1].intensity) ** 2
            level = 0.5 * (den[0].intensity + den[1].intensity)
            terms = [u - 0.5 * (i_a - i_b) ** 2, v, u - (i_a - i_b) ** 2, spread, level]
            if index == 0:
                q[which] = den[0].q_nm
            for kept, term in zip(totals[which], terms, strict=True):
                kept.append(term)
    # (1) - V, V, (3), (2) and the denoised level, each (frames, npt), per profile.
    stacked = [[np.array(t) for t in totals[which]] for which in range(len(profiles))]
    parts = [_ProfileParts.measure(q[which], mse_f, var_f, spread_f, level_f, block=block)
             for which, (mse_f, var_f, _, spread_f, level_f) in enumerate(stacked)]
    if ring_prior and None in profiles:
        ring = parts[profiles.index(None)]
        parts = [p if sector is None else p.towards(ring)
                 for p, sector in zip(parts, profiles, strict=True)]
    return [_pooled(parts[which], stacked[which][1], stacked[which][2], block=block,
                    z_alarm=z_alarm) for which in range(len(sectors))]


def _mean_over(values: np.ndarray, width: int) -> np.ndarray:
    """Centred running mean over ``width`` entries (fewer at the ends)."""
    ones = np.ones_like(values)
    return (uniform_filter1d(values, width, mode="constant")
            / uniform_filter1d(ones, width, mode="constant"))


@dataclass(frozen=True)
class _ProfileParts:
    """The two parts of one profile's sigma ratio, per bin (NaN on empty bins): the
    variance part (2) / V and the squared bias (1) - (2) over V, pooled over centred
    windows; with the bias's noise over its window, the raw half's variance V per frame and
    the denoised halves' I(q), smoothed like the bias (to carry a squared bias between
    profiles)."""

    q: np.ndarray
    valid: np.ndarray
    variance: np.ndarray
    bias: np.ndarray
    bias_noise: float
    raw_variance: np.ndarray
    level: np.ndarray
    bias_kept: float = math.nan

    @classmethod
    def measure(cls, q: np.ndarray, mse_f: np.ndarray, var_f: np.ndarray,
                spread_f: np.ndarray, level_f: np.ndarray, *, block: int) -> _ProfileParts:
        """From the per-frame terms, ``(frames, npt)`` each (see :func:`held_out_iq`)."""
        frames = len(mse_f)
        mse, var, spread = mse_f.sum(0), var_f.sum(0), spread_f.sum(0)
        valid = var > 0
        variance, bias, level = (np.full(len(q), np.nan) for _ in range(3))
        width = BIAS_BLOCKS * block
        # Equal weights: every bin's sigma is calibrated, not only the strongest bins'. The
        # variance part (2) is precise and pooled over 3 blocks' width; the bias part
        # (1) - (2) is as noisy as raw, so it is pooled over BIAS_BLOCKS blocks' width.
        variance[valid] = _mean_over(spread[valid] / var[valid], 3 * block)
        bias[valid] = _mean_over((mse[valid] - spread[valid]) / var[valid], width)
        level[valid] = _mean_over(level_f.mean(0)[valid], width)
        noise = math.nan
        if frames >= 2 and valid.any():
            # Each frame's bias part in units of the mean raw variance per frame: their mean
            # over frames is ``bias``, their scatter its noise.
            per_frame = np.stack([_mean_over((m - s)[valid] / var[valid] * frames, width)
                                  for m, s in zip(mse_f, spread_f, strict=True)])
            noise = float(np.median(per_frame.var(axis=0, ddof=1) / frames))
        return cls(q, valid, variance, bias, noise, var / frames, level)

    def towards(self, ring: _ProfileParts) -> _ProfileParts:
        """This sector's parts with its squared bias shrunk towards the full ring's (module
        docstring); unchanged where either lacks what that needs."""
        known = ring.valid & np.isfinite(ring.bias) & (ring.level > 0)
        if not (np.isfinite(self.bias_noise) and self.bias_noise > 0 and known.sum() >= 2):
            return self
        v = self.valid
        # The ring's squared bias relative to its squared intensity, at this profile's q.
        relative = np.interp(self.q[v], ring.q[known], (ring.bias * ring.raw_variance
                                                        / ring.level ** 2)[known])
        prior = relative * self.level[v] ** 2 / self.raw_variance[v]
        difference = self.bias[v] - prior
        kept = np.clip(1.0 - self.bias_noise / np.maximum(difference ** 2, 1e-300), 0.0, 1.0)
        bias = self.bias.copy()
        bias[v] = prior + kept * difference
        return dataclasses.replace(self, bias=bias, bias_kept=float(np.mean(kept)))


def _pooled(parts: _ProfileParts, var_f: np.ndarray, diff_f: np.ndarray, *, block: int,
            z_alarm: float) -> IqCheck:
    """One profile's check: its sigma ratio from ``parts``, and its fall-back from the
    per-frame, per-bin V and (3) (``(frames, npt)`` each; see the module docstring) pooled
    by blocks of q bins."""
    q, valid = parts.q, parts.valid
    frames = len(diff_f)
    diff, var = diff_f.sum(0), var_f.sum(0)
    blocks = np.full(len(q), -1)
    blocks[valid] = np.arange(int(valid.sum())) // block
    n_blocks = int(blocks.max()) + 1
    ratio = np.full(len(q), np.nan)
    z = np.zeros(len(q))
    fallback = np.zeros(len(q), bool)
    if n_blocks == 0:
        return IqCheck(q, ratio, fallback, z, frames, block, z_alarm,
                       {"kappa": np.nan, "rho": np.nan})

    def by_block(values: np.ndarray) -> np.ndarray:
        return np.bincount(blocks[valid], weights=values[valid], minlength=n_blocks)

    sums = {name: by_block(values) for name, values in
            (("diff", diff), ("var2", (var / frames) ** 2))}
    # Sigma: the full-dose ratio, bin by bin; the squared bias kept with its sign down to
    # BIAS_FLOOR times the variance part.
    variance, bias = parts.variance[valid], parts.bias[valid]
    ratio[valid] = np.maximum(variance + 2.0 * bias,
                              np.maximum(BIAS_FLOOR * variance, RATIO_FLOOR))
    # Fallback: each block's summed difference against its noise, measured on this scan.
    # The noise of one frame's block sum scales as kappa * sum(var_k**2) (a difference of
    # squares of errors whose variance is var_k); kappa is the median over blocks of the
    # frame-to-frame scatter of the block sums so scaled (robust to blocks where the
    # denoiser is worse, which move the mean and the scatter), correlations between
    # neighbouring bins included. One frame: the median absolute deviation of the per-bin
    # differences, and their lag-1 correlation, instead.
    if frames >= 2:
        per_frame = np.stack([by_block(d) for d in diff_f])
        scatter = per_frame.var(axis=0, ddof=1) / np.maximum(sums["var2"], 1e-300)
        kappa = float(np.quantile(scatter[sums["var2"] > 0], NOISE_QUANTILE)
                      / chi2.ppf(NOISE_QUANTILE, frames - 1) * (frames - 1))
        rho = 0.0
    else:
        e = diff[valid] / var[valid]
        centred = e - np.median(e)
        kappa = float((1.4826 * np.median(np.abs(centred))) ** 2)
        denom = float(np.sum(centred ** 2))
        rho = float(np.sum(centred[1:] * centred[:-1]) / denom) if denom > 0 else 0.0
        rho = min(max(rho, 0.0), 0.45)
    noise = np.sqrt(frames * kappa * sums["var2"] * (1.0 + 2.0 * rho))
    z_block = np.where(noise > 0, sums["diff"] / np.maximum(noise, 1e-300), 0.0)
    z[valid] = z_block[blocks[valid]]
    fallback[valid] = z_block[blocks[valid]] > z_alarm
    measured = {"kappa": kappa, "rho": rho}
    if np.isfinite(parts.bias_noise):
        measured["bias_noise"] = parts.bias_noise
    if np.isfinite(parts.bias_kept):
        measured["bias_kept"] = parts.bias_kept
    return IqCheck(q, ratio, fallback, z, frames, block, z_alarm, measured)
