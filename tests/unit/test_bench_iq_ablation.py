"""bench.iq_ablation's summary: each stage's fitted peak paired with the control's."""

from __future__ import annotations

import pytest

from bench.iq import FIT_KEYS, FRAMES_MEAN, PEAK_KEYS
from bench.iq_ablation import _summary


@pytest.mark.fast
def test_each_stage_is_paired_with_the_control_on_the_same_scans():
    def row(fwhm: float, height: float) -> dict[str, float]:
        return dict.fromkeys(PEAK_KEYS, 0.0) | {"fit_height": height, "fit_fwhm": fwhm,
                                                 "ratio": 0.5}

    # Minus raw, per scan: the control's width scatters with raw's noise (±4 %); the
    # stage is 1 % wider than the control on every scan.
    control = [row(0.04, 0.0), row(-0.04, 0.02), row(0.00, -0.02)]
    stage = [row(c["fit_fwhm"] + 0.01, c["fit_height"] + 0.03) for c in control]
    paired = {(0.1, "raw"): [row(0.0, 0.0)] * 3, (0.1, FRAMES_MEAN): control,
              (0.1, "pipeline"): stage}
    lines = _summary("lattice", paired)
    by_stage = {line.split(" | ")[1]: line for line in lines if line.startswith("| 0.1 |")}
    assert by_stage["pipeline"].rstrip(" |").endswith("+3.0% ± 0.0% / +1.0% ± 0.0%")
    assert by_stage[FRAMES_MEAN].rstrip(" |").endswith("+0.0% ± 0.0% / +0.0% ± 0.0%")
    assert FIT_KEYS == ("fit_height", "fit_fwhm")
