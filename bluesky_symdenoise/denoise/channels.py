"""What the network sees: a frame and its independent noisy copies, as input channels.

Channels (all counts divided by the frame's mean level ``L`` over good pixels):

====  =====================================================================
 0    the frame itself (0 on bad pixels)
 1    1 on good pixels, 0 on bad ones
 2    the frame's 180° partner (resampled), where symmetry holds, else 0
 3    1 where channel 2 is available
 4    mean of the neighbouring frames of the scan (t-1, t+1), else 0
 5    1 where channel 4 is available
 6    log10(L), the absolute count level (so the network knows the noise level)
 7    the frame's mean over the whole ring at this radius, where the ring is isotropic
 8    1 where channel 7 is available
 9    the frame's mean over the local arc (1/16 of the ring), where the arc is isotropic
10    1 where channel 9 is available
====  =====================================================================

The partner, neighbour and ring channels are independent noisy copies of (nearly) the same
expectation; the network learns how far to trust them. Where a local test of the symmetry
fails (180° rotation for channel 2, azimuthal isotropy for channels 7 and 9, tested on the
scan's sum), the channel is blanked, so a feature without a partner is never averaged with
empty sky and a textured ring is not flattened.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .symmetry import (
    PartnerMap,
    RingProfile,
    SymmetryReport,
    isotropy_validity,
    ring_profile,
    rotation180,
    symmetry_validity,
)

__all__ = ["ARC_SECTORS", "N_CHANNELS", "ChannelContext", "input_channels", "mean_level",
           "ring_means", "window_channels", "window_partner_values"]

N_CHANNELS = 11
MIN_LEVEL = 1e-3
#: Azimuthal sectors of the arc channel (9): 22.5° arcs, read back bilinearly.
ARC_SECTORS = 16


@dataclass(frozen=True)
class ChannelContext:
    """What is fixed for a scan: good pixels and where the 180° partner may be used.

    Attributes
    ----------
    good
        Bool ``(H, W)``, True on pixels that hold data.
    partner
        The 180° partner map, or None when no beam centre is known.
    symmetric
        Bool ``(H, W)``: partner on the detector, unmasked, and the local test passed.
    rings, ring_valid
        Whole-ring means about the beam centre, and where the isotropy test passed.
    arcs, arc_valid
        Arc (sector) means, and where the local isotropy test passed.
    """

    good: np.ndarray
    partner: PartnerMap | None
    symmetric: np.ndarray
    rings: RingProfile | None = None
    ring_valid: np.ndarray | None = None
    arcs: RingProfile | None = None
    arc_valid: np.ndarray | None = None

    @classmethod
    def without_symmetry(cls, good: np.ndarray) -> ChannelContext:
        """No beam centre: only the frame and its neighbours."""
        return cls(good=good, partner=None, symmetric=np.zeros_like(good, dtype=bool))

    @classmethod
    def from_scan_sum(cls, scan_sum: np.ndarray, good: np.ndarray,
                      center: tuple[float, float], *, z_threshold: float = 5.0
                      ) -> tuple[ChannelContext, SymmetryReport, SymmetryReport]:
        """Test 180° and azimuthal symmetry on a scan's sum and build the context.

        Returns
        -------
        context, rotation_report, isotropy_report
            The context and the two local tests (the arc test is the one reported: it is
            the finer of the two isotropy tests).
        """
        shape = good.shape
        bad = ~good
        rotation = symmetry_validity(scan_sum, center, bad, z_threshold=z_threshold)
        ring = isotropy_validity(scan_sum, center, bad, z_threshold=z_threshold, sectors=1)
        arc = isotropy_validity(scan_sum, center, bad, z_threshold=z_threshold,
                                sectors=ARC_SECTORS)
        context = cls(good=good, partner=rotation180(shape, center), symmetric=rotation.valid,
                      rings=ring_profile(shape, center, 1), ring_valid=ring.valid,
                      arcs=ring_profile(shape, center, ARC_SECTORS), arc_valid=arc.valid)
        return context, rotation, arc

    def without_partner(self) -> ChannelContext:
        """The same context with the 180° partner dropped (rings kept)."""
        return ChannelContext(good=self.good, partner=None,
                              symmetric=np.zeros_like(self.good, dtype=bool), rings=self.rings,
                              ring_valid=self.ring_valid, arcs=self.arcs,
                              arc_valid=self.arc_valid)


def mean_level(frame: np.ndarray, good: np.ndarray) -> float:
    """Mean counts per good pixel (floored at 1e-3 so empty frames stay finite)."""
    values = frame[good]
    return max(float(values.mean()) if values.size else 0.0, MIN_LEVEL)


def partner_values(frame: np.ndarray, ctx: ChannelContext) -> np.ndarray:
    """The frame resampled at each pixel's 180° partner, 0 where not symmetric."""
    if ctx.partner is None or not ctx.symmetric.any():
        return np.zeros_like(frame, dtype=np.float32)
    sample = ctx.partner.sample(frame, ~ctx.good)
    return np.where(ctx.symmetric, sample.values, 0.0).astype(np.float32)


def input_channels(frame: np.ndarray, ctx: ChannelContext,
                   neighbours: np.ndarray | None = None,
                   level: float | None = None) -> tuple[np.ndarray, float]:
    """Stack the network's input channels for one frame.

    Parameters
    ----------
    frame
        ``(H, W)`` counts (bad pixels may hold anything; they are zeroed).
    ctx
        The scan's :class:`ChannelContext`.
    neighbours
        ``(H, W)`` mean of neighbouring frames, or None.
    level
        Normalisation level; the frame's mean over good pixels when None.

    Returns
    -------
    channels, level
        ``(N_CHANNELS, H, W)`` float32 and the level used.
    """
    good = ctx.good
    frame = np.where(good, frame, 0.0).astype(np.float32)
    if level is None:
        level = mean_level(frame, good)
    inv = np.float32(1.0 / level)
    channels = np.zeros((N_CHANNELS,) + frame.shape, np.float32)
    channels[0] = frame * inv
    channels[1] = good
    if ctx.partner is not None and ctx.symmetric.any():
        channels[2] = partner_values(frame, ctx) * inv
        channels[3] = ctx.symmetric
    if neighbours is not None:
        channels[4] = np.where(good, neighbours, 0.0) * inv
        channels[5] = good
    channels[6] = np.log10(level)
    for profile, valid, index in ((ctx.rings, ctx.ring_valid, 7), (ctx.arcs, ctx.arc_valid, 9)):
        if profile is not None and valid is not None and valid.any():
            mean, _ = profile.mean(frame, good)
            channels[index] = np.where(valid, mean, 0.0) * inv
            channels[index + 1] = valid
    return channels, level


#: A window of a frame: ``(row, col, rows, cols)``.
Window = tuple[int, int, int, int]


def _window_index(shape: tuple[int, int], window: Window) -> np.ndarray:
    row, col, rows, cols = window
    r = np.arange(row, row + rows)
    c = np.arange(col, col + cols)
    return (r[:, None] * shape[1] + c[None, :]).ravel()


def ring_means(frame: np.ndarray, ctx: ChannelContext) -> tuple[np.ndarray | None, ...]:
    """The frame's whole-ring and arc profiles (bin means over good pixels), or None where
    the context has none: what :func:`window_channels` reads back in a window."""
    good = ctx.good
    return tuple(profile.bin_means(frame, good)[0]
                 if profile is not None and valid is not None and valid.any() else None
                 for profile, valid in ((ctx.rings, ctx.ring_valid), (ctx.arcs, ctx.arc_valid)))


def window_partner_values(frame: np.ndarray, ctx: ChannelContext, window: Window
                          ) -> np.ndarray:
    """:func:`partner_values` of a full frame, in a window only."""
    rows, cols = window[2], window[3]
    if ctx.partner is None or not ctx.symmetric.any():
        return np.zeros((rows, cols), np.float32)
    values, _ = ctx.partner.sample_at(frame, ~ctx.good, _window_index(ctx.good.shape, window))
    symmetric = _crop(ctx.symmetric, window)
    return np.where(symmetric, values.reshape(rows, cols), 0.0).astype(np.float32)


def _crop(image: np.ndarray, window: Window) -> np.ndarray:
    row, col, rows, cols = window
    return image[row:row + rows, col:col + cols]


def window_channels(frame: np.ndarray, ctx: ChannelContext, window: Window, *,
                    level: float, neighbours: np.ndarray | None = None,
                    means: tuple[np.ndarray | None, ...] | None = None) -> np.ndarray:
    """:func:`input_channels` of a full frame in a window only, for training patches of a
    large detector: the partner and ring channels come from the whole frame (its 180°
    partner pixels, its ring means), everything else from the window.

    Parameters
    ----------
    frame
        ``(H, W)`` counts, 0 on bad pixels.
    window
        ``(row, col, rows, cols)`` inside the frame.
    level
        The frame's normalisation level (:func:`mean_level` of the whole frame).
    neighbours
        The neighbouring frames' mean in the window, or None.
    means
        :func:`ring_means` of the frame (computed here when None).
    """
    good = _crop(ctx.good, window)
    inv = np.float32(1.0 / level)
    channels = np.zeros((N_CHANNELS, window[2], window[3]), np.float32)
    channels[0] = np.where(good, _crop(frame, window), 0.0) * inv
    channels[1] = good
    if ctx.partner is not None and ctx.symmetric.any():
        channels[2] = window_partner_values(frame, ctx, window) * inv
        channels[3] = _crop(ctx.symmetric, window)
    if neighbours is not None:
        channels[4] = np.where(good, neighbours, 0.0) * inv
        channels[5] = good
    channels[6] = np.log10(level)
    means = ring_means(frame, ctx) if means is None else means
    index = _window_index(ctx.good.shape, window)
    for profile, valid, profile_means, channel in (
            (ctx.rings, ctx.ring_valid, means[0], 7), (ctx.arcs, ctx.arc_valid, means[1], 9)):
        if profile is not None and valid is not None and profile_means is not None:
            valid_here = _crop(valid, window)
            mean = (profile.reader(index) @ profile_means).reshape(window[2], window[3])
            channels[channel] = np.where(valid_here, mean, 0.0) * inv
            channels[channel + 1] = valid_here
    return channels
