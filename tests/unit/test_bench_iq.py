"""bench.iq's worst binning: the expected ratio of each binning, beside the noisiest scan."""

from __future__ import annotations

import pytest

from bench.iq import worst_mean_ratio


@pytest.mark.fast
def test_the_worst_binning_is_the_largest_mean_over_the_seeds():
    full, sector = (1.0, "q_nm^-1", False), (2.0, "2th_deg", True)
    # One scan's full ring is worse than raw (a noisy corner bin), the others' better; the
    # sector is a little worse than raw's on average.
    rows = [{"ratios": {full: 1.30, sector: 0.95}, "worst_ratio": 1.30},
            {"ratios": {full: 0.50, sector: 1.05}, "worst_ratio": 1.05},
            {"ratios": {full: 0.60, sector: 1.03}, "worst_ratio": 1.03}]
    mean, where = worst_mean_ratio(rows)
    assert mean == pytest.approx((0.95 + 1.05 + 1.03) / 3)
    assert where == "2x npt, 2th, sector"
    assert max(r["worst_ratio"] for r in rows) == pytest.approx(1.30)
