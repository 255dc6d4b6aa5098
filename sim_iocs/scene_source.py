"""What the simulated detector sees: a physics scene, optionally following the sample state.

A static scene (``powder``, ``textured``, ``saxs``, ``lattice``, ``lattice_one_sided``) gives
the same expectation at every temperature. An in situ scene (``insitu``, ``insitu_lattice``)
precomputes an :func:`~bluesky_symdenoise.simulate.scenes.insitu_series` spanning the
temperature range and interpolates between its states, so a frame taken at temperature T
shows the sample as it is at T (rings drifting, lattice expanding, a phase appearing).

By default frames are photon counts (a photon-counting detector: Pilatus, Eiger). With a
:class:`FlatPanelReadout` they are the ADU of an integrating flat panel: ``gain × photons +
dark offset + Gaussian readout noise``, rounded and clipped to a 16-bit ADC.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from bluesky_symdenoise.simulate.noise import expose
from bluesky_symdenoise.simulate.scenes import SCENES, insitu_series, make_scene

__all__ = ["INSITU_CHANGES", "SCENE_CHOICES", "FlatPanelReadout", "SceneSource"]

INSITU_SCENES = {"insitu": "powder", "insitu_lattice": "lattice"}
SCENE_CHOICES = sorted(SCENES) + sorted(INSITU_SCENES)
INSITU_CHANGES = ("ring_drift", "lattice_expansion", "phase_appearing")

#: Size of the change over the whole temperature range. ``ring_drift``: the strongest
#: feature moves outwards by this many pixels; ``lattice_expansion``: the lattice grows by
#: this fraction; ``phase_appearing``: the new phase's strongest ring ends at this fraction
#: of the old one's.
_TOTAL_CHANGE = {"ring_drift": 10.0, "lattice_expansion": 0.03, "phase_appearing": 0.6}


@dataclasses.dataclass(frozen=True)
class FlatPanelReadout:
    """How an integrating (flat-panel) detector turns photons into ADU.

    ``adu = gain × photons + dark_offset + N(0, read_noise²)``, rounded to whole ADU and
    clipped to ``0 .. full_scale`` (a 16-bit ADC: the frame is what a ``UInt16`` detector
    gives). Every pixel is read out, so pixels that collect no photons (shutter closed, gaps,
    beamstop shadow, dead pixels) read ``dark_offset`` plus readout noise.

    Attributes
    ----------
    gain
        ADU per photon, > 0.
    read_noise
        Gaussian readout noise, ADU rms, >= 0.
    dark_offset
        Dark level, ADU, within ``0 .. full_scale``.
    full_scale
        Largest ADU the converter gives.
    """

    gain: float
    read_noise: float = 0.0
    dark_offset: float = 0.0
    full_scale: int = 65535

    def __post_init__(self) -> None:
        if not (np.isfinite(self.gain) and self.gain > 0):
            raise ValueError(f"gain must be > 0 ADU/photon, got {self.gain}")
        if not (np.isfinite(self.read_noise) and self.read_noise >= 0):
            raise ValueError(f"read_noise must be >= 0 ADU, got {self.read_noise}")
        if not 0 <= self.dark_offset <= self.full_scale:
            raise ValueError(f"dark_offset must be within 0..{self.full_scale} ADU, got "
                             f"{self.dark_offset}")

    def read(self, photons: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """The int32 ADU frame of ``photons`` (readout noise drawn from ``rng``)."""
        adu = self.gain * np.asarray(photons, np.float64) + self.dark_offset
        if self.read_noise > 0:
            adu += rng.normal(0.0, self.read_noise, size=adu.shape)
        return np.clip(np.rint(adu), 0, self.full_scale).astype(np.int32)


class SceneSource:
    """Expected and exposed frames of one sample on one detector.

    Parameters
    ----------
    scene
        One of :data:`SCENE_CHOICES`.
    shape
        Detector ``(rows, cols)``.
    seed
        Seed of the scene (geometry, content, defects) and of the photon noise.
    counts_per_second
        Mean counts per valid pixel per second of exposure.
    insitu_change
        For in situ scenes: one of :data:`INSITU_CHANGES`.
    temperature_range
        Temperatures (K) at the first and last state of an in situ series.
    n_states
        States precomputed along the in situ series.
    readout
        None (default): frames are photon counts. A :class:`FlatPanelReadout`: frames are
        an integrating flat panel's ADU.
    """

    def __init__(self, scene: str = "powder", *, shape: tuple[int, int] = (256, 256),
                 seed: int = 0, counts_per_second: float = 10.0,
                 insitu_change: str = "ring_drift",
                 temperature_range: tuple[float, float] = (300.0, 600.0),
                 n_states: int = 32, readout: FlatPanelReadout | None = None) -> None:
        if scene not in SCENE_CHOICES:
            raise ValueError(f"unknown scene {scene!r}; choose from {SCENE_CHOICES}")
        if counts_per_second <= 0:
            raise ValueError(f"counts_per_second must be > 0, got {counts_per_second}")
        t_low, t_high = (float(t) for t in temperature_range)
        if not t_high > t_low:
            raise ValueError(f"temperature_range must be increasing, got {temperature_range}")
        self.scene = scene
        self.shape = (int(shape[0]), int(shape[1]))
        self.counts_per_second = float(counts_per_second)
        self.temperature_range = (t_low, t_high)
        self.readout = readout
        self.rng = np.random.default_rng(seed)
        if scene in INSITU_SCENES:
            if insitu_change not in INSITU_CHANGES:
                raise ValueError(f"insitu_change must be one of {INSITU_CHANGES}")
            total = _TOTAL_CHANGE[insitu_change]
            amount = {"ring_drift": total / (n_states - 1),
                      "lattice_expansion": (1 + total) ** (1 / (n_states - 1)) - 1,
                      "phase_appearing": total}[insitu_change]
            series = insitu_series(INSITU_SCENES[scene], n_frames=n_states,
                                   change=insitu_change, amount=amount, shape=self.shape,
                                   seed=seed)
            self._states = series.expectations
            self.name, self.info = series.name, series.info
            self.mask, self.geometry, self.defects = series.mask, series.geometry, series.defects
        else:
            still = make_scene(scene, shape=self.shape, seed=seed)
            self._states = still.expectation[np.newaxis]
            self.name, self.info = still.name, still.info
            self.mask, self.geometry, self.defects = still.mask, still.geometry, still.defects

    @property
    def insitu(self) -> bool:
        return self._states.shape[0] > 1

    def state_index(self, temperature: float) -> float:
        """Fractional index into the in situ series at ``temperature`` (0 for a still)."""
        if not self.insitu:
            return 0.0
        t_low, t_high = self.temperature_range
        fraction = np.clip((float(temperature) - t_low) / (t_high - t_low), 0.0, 1.0)
        return float(fraction * (self._states.shape[0] - 1))

    def expectation(self, temperature: float) -> np.ndarray:
        """Clean pattern at ``temperature``, mean 1 count per valid pixel (float64)."""
        index = self.state_index(temperature)
        low = int(np.floor(index))
        high = min(low + 1, self._states.shape[0] - 1)
        weight = index - low
        if weight == 0.0:
            return self._states[low]
        return (1.0 - weight) * self._states[low] + weight * self._states[high]

    def frame(self, acquire_time: float, *, temperature: float,
              beam_on: bool = True) -> np.ndarray:
        """One int32 exposure of ``acquire_time`` s: Poisson counts, defects, gaps read 0.

        With the beam off (shutter closed) only hot pixels count. Hot pixels count
        ``hot_rate`` per second of exposure, so dark frames scale with time as well.
        With a :attr:`readout` the counts are then read out as ADU (see
        :class:`FlatPanelReadout`): a dark frame is the dark offset plus readout noise.
        """
        seconds = max(float(acquire_time), 0.0)
        if beam_on:
            lam = self.expectation(temperature) * (self.counts_per_second * seconds)
        else:
            lam = np.zeros(self.shape)
        defects = dataclasses.replace(self.defects, hot_rate=self.defects.hot_rate * seconds)
        frame = expose(lam, rng=self.rng, defects=defects)
        frame[self.mask] = 0
        if self.readout is not None:
            frame = self.readout.read(frame, self.rng)
        return frame

    def write_calibration(self, directory: str | Path) -> tuple[Path, Path]:
        """Write ``detector.poni`` and ``mask.npy`` (True on gaps/beamstop) into ``directory``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        poni = self.geometry.write_poni(directory / "detector.poni")
        mask = directory / "mask.npy"
        np.save(mask, self.mask)
        return poni.resolve(), mask.resolve()
