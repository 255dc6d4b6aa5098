"""bench.sharp_bins: which scans the half-pixel ring holds act on, from the engine's analysis."""

from __future__ import annotations

import pytest

from bench.quality import make_scan
from bench.sharp_bins import count_sharp_bins


@pytest.mark.fast
def test_a_sharp_ring_scan_selects_bins_and_a_faint_powder_none():
    # bench.iq's scans: rings about 1 px wide at 1 count/pixel show structure below the 1 px
    # bins in the scan's sum; a smooth powder at 0.1 counts/pixel shows none.
    sharp = make_scan("sharp_textured", 1.0, size=128, n_frames=3, seed=203)
    faint = make_scan("powder", 0.1, size=128, n_frames=3, seed=1)
    assert count_sharp_bins(sharp.frames, sharp.mask, sharp.geometry.center) >= 10
    assert count_sharp_bins(faint.frames, faint.mask, faint.geometry.center) == 0


@pytest.mark.fast
def test_crest_bins_are_all_held_at_low_counts_and_few_at_high():
    # A sharp ring's crest bins at 0.1 counts/pixel on 128² hold tens of counts a frame,
    # all held outright; at 10 counts/pixel most hold more than the rule's 400.
    from bench.sharp_bins import count_crest_bins
    from bluesky_symdenoise.denoise.consistency import CREST_OUTRIGHT_COUNTS

    low = make_scan("sharp_textured", 0.1, size=128, n_frames=3, seed=7)
    held, across, most = count_crest_bins(low.frames, low.mask, low.geometry.center)
    assert across > 0 and held == across and most < CREST_OUTRIGHT_COUNTS
    high = make_scan("sharp_textured", 10.0, size=128, n_frames=3, seed=7)
    held, across, most = count_crest_bins(high.frames, high.mask, high.geometry.center)
    assert across > 0 and held < 0.5 * across and most > CREST_OUTRIGHT_COUNTS


@pytest.mark.fast
def test_a_sharp_rings_crests_are_narrow_and_a_powders_are_not():
    # Rings 0.8-1.5 px wide (FWHM) against powder rings 2.4-3.2 px wide, at 0.1 counts/pixel.
    from bench.sharp_bins import count_narrow_crests

    sharp = make_scan("sharp_textured", 0.1, size=128, n_frames=3, seed=7)
    narrow, crests = count_narrow_crests(sharp.frames, sharp.mask, sharp.geometry.center)
    assert crests > 0 and narrow == crests
    powder = make_scan("powder", 0.1, size=256, n_frames=3, seed=450726)
    narrow, crests = count_narrow_crests(powder.frames, powder.mask, powder.geometry.center)
    assert crests >= 5 and narrow == 0
