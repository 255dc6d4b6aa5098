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
