"""Synthetic diffraction scenes with a known noise-free truth.

Every generator returns a :class:`Scene` whose ``expectation`` is the clean pattern in
expected counts per pixel, normalised to a mean of 1.0 over valid (unmasked) pixels, so
``scene.expose(c, rng)`` gives a frame at ``c`` counts/pixel. The pattern is computed from
the pyFAI geometry of the scene (2θ, χ, polarisation, solid angle), so rings sit exactly
where pyFAI integrates them.

Symmetry facts the denoiser relies on, and which the tests check:

- powder, textured, saxs, fibre and lattice scenes are invariant under a 180° rotation about the
  beam centre (texture and anisotropy are functions of 2χ; Bragg intensities obey Friedel's
  law; the polarisation factor depends on cos 2χ);
- ``lattice_one_sided`` adds a feature without a partner (a negative control);
- the *mask* is not symmetric (beamstop arm, module gaps), as on a real detector.

Values under the mask hold the unobstructed scene (useful for reference); exposed frames read
0 there.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..geometry import DetectorGeometry
from .defects import (
    DetectorDefects,
    beamstop_mask,
    default_gap_offset,
    detector_mask,
    make_defects,
    pyfai_detector_mask,
)
from .noise import expose as _expose
from .noise import expose_integrating as _expose_integrating

__all__ = [
    "SCENES",
    "Scene",
    "SceneSeries",
    "crystal_lattice",
    "crystal_lattice_one_sided",
    "insitu_series",
    "isotropic_powder",
    "make_scene",
    "saxs",
    "sharp_textured_powder",
    "textured_powder",
]

#: Optics per scene family for a 172 µm pixel: (distance m, wavelength m). Powder and
#: lattice: 62 keV at 10 cm puts ~10 CeO2 rings inside a 256² crop; SAXS: 12.4 keV at 2 m.
_OPTICS_172UM = {"wide_angle": (0.10, 0.2e-10), "saxs": (2.0, 1.0e-10)}
_REFERENCE_PIXEL = 172e-6
_REGION_RADIUS_PX = 3.0


# ---------------------------------------------------------------------------------------
# Public containers
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Scene:
    """A noise-free scene on a detector, with what a benchmark needs to score a denoiser.

    Attributes
    ----------
    name
        Scene kind (``"powder"``, ``"textured"``, ...).
    expectation
        float64 ``(rows, cols)`` expected counts per pixel, mean 1.0 over ``~mask``.
        Detector defects are *not* in it: it is the clean truth.
    mask
        bool ``(rows, cols)``, True on bad pixels: module gaps, beamstop and its arm.
    geometry
        Detector geometry (beam centre, pixel size, distance, wavelength).
    defects
        Hot and dead pixels, applied by :meth:`expose`.
    regions
        Named bool masks (valid pixels only) for metrics: ``"strongest_ring"``,
        ``"satellites"``, ``"one_sided_feature"``, ... where the scene has them.
    info
        JSON-safe facts: seed, kind, centre, calibrant, lattice constants, ``q_strongest_nm``...
    """

    name: str
    expectation: np.ndarray
    mask: np.ndarray
    geometry: DetectorGeometry
    defects: DetectorDefects
    regions: dict[str, np.ndarray] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def valid(self) -> np.ndarray:
        """Pixels not under the mask (gaps, beamstop)."""
        return ~self.mask

    @property
    def usable(self) -> np.ndarray:
        """Valid pixels that are neither hot nor dead."""
        return ~(self.mask | self.defects.bad)

    def scaled(self, counts_per_pixel: float) -> np.ndarray:
        """Expectation at a mean level of ``counts_per_pixel`` (float64)."""
        return self.expectation * float(counts_per_pixel)

    def expose(self, counts_per_pixel: float, rng: np.random.Generator,
               readout_sigma: float = 0.0) -> np.ndarray:
        """One noisy frame at ``counts_per_pixel``, with defects; masked pixels read 0.

        Returns int32 counts for ``readout_sigma == 0`` (photon counting), else float32.
        """
        frame = _expose(self.scaled(counts_per_pixel), rng=rng, readout_sigma=readout_sigma,
                        defects=self.defects)
        frame[self.mask] = 0
        return frame

    def expose_integrating(self, counts_per_pixel: float, rng: np.random.Generator, *,
                           gain: float, read_noise: float, offset: float = 0.0,
                           psf_sigma: float = 0.0, dark_frames: int = 16,
                           dark_subtracted: bool = True, dark: np.ndarray | None = None,
                           saturation: float | None = None) -> np.ndarray:
        """One integrating-detector frame (ADU) at ``counts_per_pixel``; masked pixels read 0.

        A flat panel or CCD/CMOS frame at ``counts_per_pixel`` photons per pixel, with
        defects; the parameters are those of
        :func:`~bluesky_symdenoise.simulate.noise.expose_integrating`. The point spread sees
        the unobstructed scene, so the frame's expectation (dark subtracted) is
        ``gain · blur_psf(self.scaled(counts_per_pixel), psf_sigma)``. Pass one ``dark``
        (:func:`~bluesky_symdenoise.simulate.noise.measure_dark`) to every frame of a scan
        to share its fixed pattern, as a beamline dark does.

        Returns
        -------
        numpy.ndarray
            float32 ``(rows, cols)``.
        """
        frame = _expose_integrating(self.scaled(counts_per_pixel), rng=rng, gain=gain,
                                    read_noise=read_noise, offset=offset,
                                    psf_sigma=psf_sigma, dark_frames=dark_frames,
                                    dark_subtracted=dark_subtracted, dark=dark,
                                    defects=self.defects, saturation=saturation)
        frame[self.mask] = 0
        return frame


@dataclass(frozen=True)
class SceneSeries:
    """A scan of frames of one changing sample on one detector.

    Attributes
    ----------
    name
        ``"insitu_<kind>_<change>"``.
    expectations
        float64 ``(frames, rows, cols)``; mean 1.0 over all frames and valid pixels (one
        common scale, so a phase that appears really adds intensity).
    mask, geometry, defects
        Shared by all frames.
    regions
        One dict of named bool masks per frame.
    info
        JSON-safe facts, with per-frame lists (e.g. ``q_strongest_nm``).
    """

    name: str
    expectations: np.ndarray
    mask: np.ndarray
    geometry: DetectorGeometry
    defects: DetectorDefects
    regions: list[dict[str, np.ndarray]] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.expectations.shape[0])

    def scaled(self, counts_per_pixel: float) -> np.ndarray:
        """Expectations at a mean level of ``counts_per_pixel`` (float64)."""
        return self.expectations * float(counts_per_pixel)

    def expose(self, counts_per_pixel: float, rng: np.random.Generator,
               readout_sigma: float = 0.0) -> np.ndarray:
        """Noisy frames ``(frames, rows, cols)``; masked pixels read 0."""
        frames = _expose(self.scaled(counts_per_pixel), rng=rng, readout_sigma=readout_sigma,
                         defects=self.defects)
        frames[:, self.mask] = 0
        return frames


# ---------------------------------------------------------------------------------------
# Shared set-up: geometry, per-pixel maps, masks, defects
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _PixelMaps:
    """Per-pixel quantities from pyFAI, plus a radius sort for fast ring rendering."""

    two_theta: np.ndarray
    chi: np.ndarray
    q_nm: np.ndarray
    radius_px: np.ndarray  # D·tan(2θ)/pixel: the radius a ring of that 2θ has
    polarisation: np.ndarray
    solid_angle: np.ndarray
    order: np.ndarray
    radius_sorted: np.ndarray


def _pixel_maps(geometry: DetectorGeometry) -> _PixelMaps:
    ai = geometry.integrator()
    shape = geometry.shape
    two_theta = ai.center_array(shape, unit="2th_rad", scale=False)
    chi = ai.center_array(shape, unit="chi_rad", scale=False)
    q_nm = ai.center_array(shape, unit="q_nm^-1", scale=False)
    radius = geometry.distance * np.tan(two_theta) / geometry.pixel_size
    order = np.argsort(radius, axis=None, kind="stable")
    return _PixelMaps(two_theta=two_theta, chi=chi, q_nm=q_nm, radius_px=radius,
                      polarisation=np.asarray(ai.polarization(shape, factor=0.95),
                                              dtype=np.float64),
                      solid_angle=np.asarray(ai.solidAngleArray(shape), dtype=np.float64),
                      order=order, radius_sorted=radius.ravel()[order])


@dataclass(frozen=True)
class _Setup:
    kind: str
    seed: int
    geometry: DetectorGeometry
    maps: _PixelMaps
    mask: np.ndarray
    defects: DetectorDefects
    rng: np.random.Generator  # for the scene content
    info: dict[str, Any]

    @property
    def valid(self) -> np.ndarray:
        return ~self.mask


def _generic_center(shape: tuple[int, int], rng: np.random.Generator) -> tuple[float, float]:
    """Middle ± 10 %, with fractional parts away from .0 and .5 (e.g. .37)."""
    center = []
    for size in shape:
        whole = np.floor((size - 1) / 2 + rng.uniform(-0.1, 0.1) * size)
        frac = rng.uniform(0.15, 0.4) * rng.choice([-1.0, 1.0])
        center.append(float(whole + frac))
    return center[0], center[1]


def _setup(kind: str, *, shape: tuple[int, int], center: tuple[float, float] | None,
           seed: int, detector: str, pixel_size: float | None, distance: float | None,
           wavelength: float | None, beamstop_radius: float, arm_angle_deg: float | None,
           optics: str) -> _Setup:
    shape = (int(shape[0]), int(shape[1]))
    layout_ss, content_ss, defects_ss = np.random.SeedSequence(seed).spawn(3)
    layout_rng = np.random.default_rng(layout_ss)
    if center is None:
        center = _generic_center(shape, layout_rng)
    if arm_angle_deg is None:
        arm_angle_deg = float(layout_rng.uniform(0.0, 360.0))
    if pixel_size is None:
        from pyFAI.detectors import detector_factory

        pixel_size = float(detector_factory(detector).pixel1)
    ref_distance, ref_wavelength = _OPTICS_172UM[optics]
    if distance is None:
        distance = ref_distance * pixel_size / _REFERENCE_PIXEL
    if wavelength is None:
        wavelength = ref_wavelength
    geometry = DetectorGeometry.from_center(shape, center, pixel_size=pixel_size,
                                            distance=distance, wavelength=wavelength)
    offset = default_gap_offset(shape, detector)
    gaps = detector_mask(shape, detector=detector, offset=offset)
    shadow = beamstop_mask(shape, geometry.center, radius=beamstop_radius,
                           arm_angle_deg=arm_angle_deg)
    defects = make_defects(shape, rng=np.random.default_rng(defects_ss))
    pyfai_detector_mask(detector)  # fail early on unknown names
    info: dict[str, Any] = {
        "kind": kind, "seed": int(seed), "center": [float(c) for c in geometry.center],
        "detector": detector, "detector_offset": [int(o) for o in offset],
        "beamstop_radius_px": float(beamstop_radius), "arm_angle_deg": float(arm_angle_deg),
        "geometry": geometry.as_metadata(), "defects": defects.as_metadata(),
    }
    return _Setup(kind=kind, seed=int(seed), geometry=geometry,
                  maps=_pixel_maps(geometry), mask=gaps | shadow, defects=defects,
                  rng=np.random.default_rng(content_ss), info=info)


def _normalise(image: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, float]:
    scale = float(image[valid].mean())
    return image / scale, scale


def _near(points_rc: np.ndarray, shape: tuple[int, int], radius: float) -> np.ndarray:
    """bool mask of pixels within ``radius`` of any of the points ``(n, 2)``."""
    out = np.zeros(shape, dtype=bool)
    points_rc = points_rc[np.all(np.isfinite(points_rc), axis=1)]
    if len(points_rc) == 0:
        return out
    w = int(np.ceil(radius))
    offsets = np.arange(-w, w + 1)
    rows = np.rint(points_rc[:, 0])[:, None, None] + offsets[None, :, None]
    cols = np.rint(points_rc[:, 1])[:, None, None] + offsets[None, None, :]
    rows, cols = np.broadcast_arrays(rows, cols)
    close = ((rows - points_rc[:, 0, None, None]) ** 2
             + (cols - points_rc[:, 1, None, None]) ** 2) <= radius ** 2
    inside = close & (rows >= 0) & (rows < shape[0]) & (cols >= 0) & (cols < shape[1])
    out[rows[inside].astype(int), cols[inside].astype(int)] = True
    return out


# ---------------------------------------------------------------------------------------
# Powder rings
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _PowderModel:
    """Rings of one phase: d-spacings, peak heights, texture (strength, kappa, chi0)."""

    calibrant: str
    dspacing_A: np.ndarray
    amplitude: np.ndarray
    texture: np.ndarray | None  # (n_rings, 3) or None for isotropic
    fwhm_px: float
    eta: float  # Lorentzian fraction of the pseudo-Voigt


def _ring_radius_px(dspacing_A: np.ndarray, geometry: DetectorGeometry) -> np.ndarray:
    sin_theta = geometry.wavelength / (2.0 * np.asarray(dspacing_A) * 1e-10)
    two_theta = 2.0 * np.arcsin(np.clip(sin_theta, 0.0, 1.0))
    radius = geometry.distance * np.tan(two_theta) / geometry.pixel_size
    return np.where((sin_theta < 1) & (two_theta < np.pi / 2), radius, np.inf)


@functools.lru_cache(maxsize=8)
def _calibrant_dspacing(name: str) -> tuple[float, ...]:
    from pyFAI.calibrant import get_calibrant

    return tuple(float(d) for d in get_calibrant(name).dspacing)


def _powder_model(setup: _Setup, rng: np.random.Generator, *, calibrant: str,
                  textured: bool, strongest_amplitude: float = 1.0,
                  fwhm_px: tuple[float, float] = (2.4, 3.2),
                  texture_strength: tuple[float, float] = (0.5, 0.95)) -> _PowderModel:
    """Rings of ``calibrant`` reaching the detector; the first ring is the strongest.

    ``fwhm_px`` and ``texture_strength`` are the ranges the ring width (px) and each ring's
    texture strength are drawn from."""
    d_all = np.asarray(_calibrant_dspacing(calibrant))
    r_max = float(setup.maps.radius_px.max()) * 1.05 + 10.0
    d = d_all[_ring_radius_px(d_all, setup.geometry) < r_max]
    q = 20.0 * np.pi / d  # nm^-1 from Å
    amplitude = rng.uniform(0.15, 0.6, size=d.size) * np.exp(-(q / 60.0) ** 2)
    amplitude[0] = 1.0
    amplitude *= strongest_amplitude
    keep = amplitude > 2e-3 * strongest_amplitude
    texture = None
    if textured:
        texture = np.column_stack([rng.uniform(*texture_strength, d.size),  # strength
                                   rng.uniform(1.0, 5.0, d.size),      # kappa
                                   rng.uniform(0.0, np.pi, d.size)])[keep]
        texture[0, 0] = min(texture[0, 0], 0.6)  # keep ring 0 the strongest on average
    return _PowderModel(calibrant=calibrant, dspacing_A=d[keep], amplitude=amplitude[keep],
                        texture=texture, fwhm_px=float(rng.uniform(*fwhm_px)),
                        eta=float(rng.uniform(0.2, 0.4)))


def _texture_factor(chi: np.ndarray, strength: float, kappa: float, chi0: float) -> np.ndarray:
    """Fibre-like texture, a function of 2(χ-χ0): invariant under a 180° rotation."""
    return (1.0 - strength) + strength * np.exp(kappa * (np.cos(2.0 * (chi - chi0)) - 1.0))


def _mean_texture(texture: np.ndarray | None, n: int) -> np.ndarray:
    if texture is None:
        return np.ones(n)
    chi = np.linspace(0.0, 2 * np.pi, 720, endpoint=False)
    return np.array([_texture_factor(chi, *row).mean() for row in texture])


def _pseudo_voigt(dx: np.ndarray, fwhm: float, eta: float) -> np.ndarray:
    """Peak-height-1 pseudo-Voigt profile."""
    x2 = (dx / fwhm) ** 2
    return eta / (1.0 + 4.0 * x2) + (1.0 - eta) * np.exp(-4.0 * np.log(2.0) * x2)


def _render_rings(setup: _Setup, model: _PowderModel, *, d_scale: float = 1.0,
                  weight: float = 1.0) -> np.ndarray:
    """Sum of the rings (no background, no polarisation) on the detector."""
    maps = setup.maps
    out = np.zeros(maps.radius_px.size)
    chi_flat = maps.chi.ravel()
    radii = _ring_radius_px(model.dspacing_A * d_scale, setup.geometry)
    for k, (r_k, amp) in enumerate(zip(radii, model.amplitude * weight, strict=True)):
        if not np.isfinite(r_k) or amp <= 0:
            continue
        # Window: until the Lorentzian tail drops below ~1e-3 of the strongest ring.
        half = model.fwhm_px * max(2.0, 0.5 * np.sqrt(model.eta * amp / 1e-3))
        lo, hi = np.searchsorted(maps.radius_sorted, [r_k - half, r_k + half])
        if hi <= lo:
            continue
        idx = maps.order[lo:hi]
        values = amp * _pseudo_voigt(maps.radius_sorted[lo:hi] - r_k, model.fwhm_px,
                                     model.eta)
        if model.texture is not None:
            values *= _texture_factor(chi_flat[idx], *model.texture[k])
        out[idx] += values
    return out.reshape(maps.radius_px.shape)


def _near_radii(setup: _Setup, radii: np.ndarray, half_width: float) -> np.ndarray:
    """Valid pixels within ``half_width`` px (radially) of any of the ring radii."""
    maps = setup.maps
    out = np.zeros(maps.radius_px.size, dtype=bool)
    for radius in np.asarray(radii)[np.isfinite(radii)]:
        lo, hi = np.searchsorted(maps.radius_sorted, [radius - half_width, radius + half_width])
        out[maps.order[lo:hi]] = True
    return out.reshape(maps.radius_px.shape) & setup.valid


def _powder_background(setup: _Setup, rng: np.random.Generator) -> np.ndarray:
    """Air scatter decaying with q, an amorphous hump and a flat floor."""
    q = setup.maps.q_nm
    air = rng.uniform(0.02, 0.04) * np.exp(-q / rng.uniform(10.0, 20.0))
    hump = rng.uniform(0.02, 0.04) * np.exp(-0.5 * ((q - rng.uniform(18, 24)) / 6.0) ** 2)
    return rng.uniform(0.005, 0.01) + air + hump


def _strongest_ring(setup: _Setup, model: _PowderModel, d_scale: float = 1.0
                    ) -> tuple[int, float]:
    """Index and radius (px) of the ring with the highest azimuthally averaged height."""
    k = int(np.argmax(model.amplitude * _mean_texture(model.texture, model.amplitude.size)))
    return k, float(_ring_radius_px(model.dspacing_A[k:k + 1] * d_scale, setup.geometry)[0])


def _ring_facts(setup: _Setup, model: _PowderModel, d_scale: float = 1.0
                ) -> tuple[dict[str, Any], np.ndarray]:
    k, radius = _strongest_ring(setup, model, d_scale)
    d_nm = float(model.dspacing_A[k]) * d_scale / 10.0
    two_theta = 2.0 * np.arcsin(setup.geometry.wavelength * 1e9 / (2.0 * d_nm))
    region = _near_radii(setup, np.array([radius]), model.fwhm_px)
    facts = {"q_strongest_nm": 2.0 * np.pi / d_nm, "d_strongest_A": d_nm * 10.0,
             "two_theta_strongest_deg": float(np.degrees(two_theta)),
             "radius_strongest_px": radius}
    return facts, region


def _powder_scene(kind: str, textured: bool, *, shape, center, seed, detector, pixel_size,
                  distance, wavelength, beamstop_radius, arm_angle_deg,
                  calibrant: str, **model_options: Any) -> Scene:
    setup = _setup(kind, shape=shape, center=center, seed=seed, detector=detector,
                   pixel_size=pixel_size, distance=distance, wavelength=wavelength,
                   beamstop_radius=beamstop_radius, arm_angle_deg=arm_angle_deg,
                   optics="wide_angle")
    model = _powder_model(setup, setup.rng, calibrant=calibrant, textured=textured,
                          **model_options)
    image = _render_rings(setup, model) + _powder_background(setup, setup.rng)
    image *= setup.maps.polarisation * setup.maps.solid_angle
    expectation, scale = _normalise(image, setup.valid)
    facts, ring_region = _ring_facts(setup, model)
    info = {**setup.info, **facts, "calibrant": calibrant, "n_rings": int(model.amplitude.size),
            "ring_fwhm_px": model.fwhm_px, "ring_lorentz_fraction": model.eta,
            "dspacing_A": [float(d) for d in model.dspacing_A],
            "polarisation_factor": 0.95, "normalisation": scale}
    return Scene(name=kind, expectation=expectation, mask=setup.mask, geometry=setup.geometry,
                 defects=setup.defects, regions={"strongest_ring": ring_region}, info=info)


def isotropic_powder(*, shape: tuple[int, int] = (256, 256),
                     center: tuple[float, float] | None = None, seed: int = 0,
                     detector: str = "Pilatus1M", pixel_size: float | None = None,
                     distance: float | None = None, wavelength: float | None = None,
                     beamstop_radius: float = 8.0, arm_angle_deg: float | None = None,
                     calibrant: str = "CeO2") -> Scene:
    """Isotropic powder rings of a pyFAI calibrant on a smooth background.

    Parameters
    ----------
    shape
        Detector crop ``(rows, cols)``.
    center
        Beam centre ``(row, col)``; None draws a generic (non-half-integer) one near the
        middle.
    seed
        Seeds centre, arm angle, ring heights, background and defects.
    detector
        pyFAI detector whose module gaps are cropped into the mask.
    pixel_size, distance, wavelength
        Metres. Defaults: the detector's pixel, 62 keV and 10 cm (scaled with the pixel),
        which places ~10 CeO2 rings inside 256².
    beamstop_radius, arm_angle_deg
        Beamstop disc radius (px) and arm direction (deg; None: drawn from the seed).
    calibrant
        pyFAI calibrant name; its first ring is the strongest.

    Returns
    -------
    Scene
        Regions: ``"strongest_ring"``. Info: ``q_strongest_nm``, ``dspacing_A``, ...
    """
    return _powder_scene("powder", False, shape=shape, center=center, seed=seed,
                         detector=detector, pixel_size=pixel_size, distance=distance,
                         wavelength=wavelength, beamstop_radius=beamstop_radius,
                         arm_angle_deg=arm_angle_deg, calibrant=calibrant)


def textured_powder(*, shape: tuple[int, int] = (256, 256),
                    center: tuple[float, float] | None = None, seed: int = 0,
                    detector: str = "Pilatus1M", pixel_size: float | None = None,
                    distance: float | None = None, wavelength: float | None = None,
                    beamstop_radius: float = 8.0, arm_angle_deg: float | None = None,
                    calibrant: str = "CeO2", fwhm_px: tuple[float, float] = (2.4, 3.2),
                    texture_strength: tuple[float, float] = (0.5, 0.95),
                    kind: str = "textured") -> Scene:
    """Powder rings with a per-ring azimuthal texture that is 180°-symmetric.

    Each ring is modulated by ``(1-s) + s·exp(κ(cos 2(χ-χ0) - 1))`` with its own ``s``,
    ``κ`` and ``χ0``. Parameters as :func:`isotropic_powder`, and the ranges each scene's
    ring FWHM (px) and each ring's texture strength ``s`` are drawn from; ``kind`` names
    the scene.

    Returns
    -------
    Scene
        Regions: ``"strongest_ring"`` (highest azimuthal mean).
    """
    return _powder_scene(kind, True, shape=shape, center=center, seed=seed,
                         detector=detector, pixel_size=pixel_size, distance=distance,
                         wavelength=wavelength, beamstop_radius=beamstop_radius,
                         arm_angle_deg=arm_angle_deg, calibrant=calibrant,
                         fwhm_px=tuple(fwhm_px), texture_strength=tuple(texture_strength))


def sharp_textured_powder(*, fwhm_px: tuple[float, float] = (0.8, 1.5),
                          texture_strength: tuple[float, float] = (0.1, 0.3),
                          **options: Any) -> Scene:
    """Sharp (about one pixel wide), mildly textured powder rings: a high-resolution setting.

    :func:`textured_powder` with rings 0.8-1.5 px wide and textures of strength 0.1-0.3
    (other parameters as there). Rings this sharp are where any resampling or radial
    smoothing of a denoiser shows in I(q) (a ring narrower than the bilinear kernel of a
    generic beam centre's 180° partner is broadened by it).
    """
    return textured_powder(fwhm_px=fwhm_px, texture_strength=texture_strength,
                           kind="sharp_textured", **options)


# ---------------------------------------------------------------------------------------
# SAXS
# ---------------------------------------------------------------------------------------
def _sphere_form_factor(qr: np.ndarray) -> np.ndarray:
    qr = np.maximum(qr, 1e-6)
    return (3.0 * (np.sin(qr) - qr * np.cos(qr)) / qr ** 3) ** 2


def _schulz_spheres(q: np.ndarray, radius_nm: float, polydispersity: float) -> np.ndarray:
    """I(q) of Schulz-distributed spheres, ∝ ⟨V² P(qR)⟩, normalised to 1 at q → 0."""
    z = 1.0 / polydispersity ** 2 - 1.0
    radii = np.linspace(max(radius_nm * (1 - 5 * polydispersity), 0.1),
                        radius_nm * (1 + 5 * polydispersity), 121)
    # Schulz pdf up to a constant: R^z exp(-(z+1) R / R0)
    log_pdf = z * np.log(radii / radius_nm) - (z + 1.0) * (radii / radius_nm - 1.0)
    weight = np.exp(log_pdf) * radii ** 6
    weight /= weight.sum()
    return _sphere_form_factor(q[:, None] * radii[None, :]) @ weight


def saxs(*, shape: tuple[int, int] = (256, 256), center: tuple[float, float] | None = None,
         seed: int = 0, detector: str = "Pilatus1M", pixel_size: float | None = None,
         distance: float | None = None, wavelength: float | None = None,
         beamstop_radius: float = 8.0, arm_angle_deg: float | None = None,
         anisotropy: float | None = None) -> Scene:
    """Small-angle scattering of polydisperse spheres (Schulz distribution).

    Parameters
    ----------
    shape, center, seed, detector, pixel_size, beamstop_radius, arm_angle_deg
        As :func:`isotropic_powder`.
    distance, wavelength
        Defaults: 2 m (scaled with the pixel) and 1 Å, i.e. q up to ~1 nm^-1 on 256².
    anisotropy
        Amplitude ``a`` of a centrosymmetric ``1 + a·cos 2(χ-χ0)`` modulation (aligned
        particles); None draws it in [0.1, 0.25], 0 gives an isotropic pattern.

    Returns
    -------
    Scene
        Regions: ``"form_factor_maximum"`` (first side maximum). Info: sphere radius,
        polydispersity.
    """
    setup = _setup("saxs", shape=shape, center=center, seed=seed, detector=detector,
                   pixel_size=pixel_size, distance=distance, wavelength=wavelength,
                   beamstop_radius=beamstop_radius, arm_angle_deg=arm_angle_deg,
                   optics="saxs")
    rng = setup.rng
    q = setup.maps.q_nm
    q_max = float(q.max())
    radius_nm = float(rng.uniform(3.5, 6.0) * 4.493 / (0.35 * q_max))
    polydispersity = float(rng.uniform(0.07, 0.12))
    q_grid = np.linspace(0.0, q_max * 1.001, 2048)
    i_grid = _schulz_spheres(q_grid, radius_nm, polydispersity)
    image = np.interp(q, q_grid, i_grid) + rng.uniform(3e-5, 1e-4)
    if anisotropy is None:
        anisotropy = float(rng.uniform(0.1, 0.25))
    chi0 = float(rng.uniform(0.0, np.pi))
    image *= 1.0 + anisotropy * np.cos(2.0 * (setup.maps.chi - chi0))
    image *= setup.maps.polarisation * setup.maps.solid_angle
    expectation, scale = _normalise(image, setup.valid)
    q_peak = 5.763 / radius_nm  # first side maximum of a sphere: qR ≈ 5.76
    region = (np.abs(q - q_peak) <= 0.1 * q_peak) & setup.valid
    info = {**setup.info, "sphere_radius_nm": radius_nm, "polydispersity": polydispersity,
            "anisotropy": float(anisotropy), "anisotropy_chi0_rad": chi0,
            "q_form_factor_maximum_nm": q_peak, "normalisation": scale}
    return Scene(name="saxs", expectation=expectation, mask=setup.mask,
                 geometry=setup.geometry, defects=setup.defects,
                 regions={"form_factor_maximum": region}, info=info)


# ---------------------------------------------------------------------------------------
# Single-crystal lattice
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _LatticeModel:
    """A 2-D reciprocal lattice in the detector plane, with modulation satellites.

    Fractional coordinates of the satellites (``modulation``) and of the one-sided feature
    (``one_sided``) are chosen far from each other, from the main spots and from the 180°
    partner of the one-sided feature (distances ≥ ~0.35 of a cell on the unit torus).
    """

    a_nm: float
    b_nm: float
    gamma_rad: float
    phi_rad: float
    hk: np.ndarray  # (n, 2) int
    intensity: np.ndarray  # (n,) peak heights, Friedel symmetric
    modulation: np.ndarray  # (2,) fractional
    one_sided: np.ndarray  # (2,) fractional
    sigma_px: float
    satellite_ratio: float = 0.01

    def reciprocal(self, scale: float = 1.0) -> np.ndarray:
        """Rows a*, b* in nm^-1 as (q_row, q_col); real-space lengths × ``scale``."""
        g = self.gamma_rad
        real = scale * np.array([[self.a_nm, 0.0],
                                 [self.b_nm * np.cos(g), self.b_nm * np.sin(g)]])
        recip = 2.0 * np.pi * np.linalg.inv(real).T
        c, s = np.cos(self.phi_rad), np.sin(self.phi_rad)
        return recip @ np.array([[c, s], [-s, c]])


def fibre(*, shape: tuple[int, int] = (256, 256), center: tuple[float, float] | None = None,
          seed: int = 0, detector: str = "Pilatus1M", pixel_size: float | None = None,
          distance: float | None = None, wavelength: float | None = None,
          beamstop_radius: float = 8.0, arm_angle_deg: float | None = None,
          domains: int | None = None) -> Scene:
    """Fibre diffraction of oriented fibres: an equatorial streak and meridional arcs.

    Each orientation domain has a fibre axis at a random azimuth ``χ0``: diffuse scattering
    from the elongated fibrils concentrated on the equator (perpendicular to the axis, a
    streak of angular width 6-15°, decaying as ``q^-p``), and layer-line reflections on the
    meridian: arcs of radial FWHM 2-4 px and angular width 10-25° at two or three ``q``. A
    second domain (``domains=2``, drawn half the time when None) adds a weaker, rotated copy:
    several orientations in one pattern. Centrosymmetric, on a weak isotropic background.

    Parameters
    ----------
    shape, center, seed, detector, pixel_size, distance, wavelength, beamstop_radius,
    arm_angle_deg
        As :func:`saxs`.
    domains
        Orientation domains, 1 or 2 (None: drawn).

    Returns
    -------
    Scene
        Regions: ``"meridional_arc"`` (the strongest arc of the first domain). Info: each
        domain's axis azimuth, streak width and arcs.
    """
    setup = _setup("fibre", shape=shape, center=center, seed=seed, detector=detector,
                   pixel_size=pixel_size, distance=distance, wavelength=wavelength,
                   beamstop_radius=beamstop_radius, arm_angle_deg=arm_angle_deg,
                   optics="saxs")
    rng = setup.rng
    radius, chi = setup.maps.radius_px, setup.maps.chi
    r_max = float(radius[setup.valid].max())
    if domains is None:
        domains = int(rng.integers(1, 3))
    image = np.full(shape, float(rng.uniform(0.01, 0.03)))
    facts, strongest = [], None
    for d in range(int(domains)):
        weight = 1.0 if d == 0 else float(rng.uniform(0.3, 0.6))
        chi0 = float(rng.uniform(0.0, np.pi))
        width = np.deg2rad(rng.uniform(6.0, 15.0))  # streak's angular σ
        kappa_streak = 1.0 / (4.0 * width ** 2)  # von Mises in 2(χ-χ0): σ ≈ width
        power = float(rng.uniform(2.0, 3.5))
        core = float(rng.uniform(6.0, 12.0))
        streak = (1.0 + (radius / core) ** 2) ** (-power / 2.0)
        image += weight * 3.0 * streak * np.exp(kappa_streak * (np.cos(2.0 * (chi - chi0)) - 1))
        arcs = []
        for _ in range(int(rng.integers(2, 4))):
            r0 = float(rng.uniform(0.25, 0.85) * r_max)
            fwhm = float(rng.uniform(2.0, 4.0))
            spread = np.deg2rad(rng.uniform(10.0, 25.0))
            height = weight * float(rng.uniform(0.2, 0.8))
            kappa = 1.0 / (4.0 * spread ** 2)
            meridian = chi0 + np.pi / 2.0
            radial = np.exp(-4.0 * np.log(2.0) * ((radius - r0) / fwhm) ** 2)
            image += height * radial * np.exp(kappa * (np.cos(2.0 * (chi - meridian)) - 1))
            arcs.append({"radius_px": r0, "fwhm_px": fwhm, "angular_sigma_deg":
                         float(np.rad2deg(spread)), "height": height})
            if d == 0 and (strongest is None or height > strongest[0]):
                angular = np.cos(2.0 * (chi - meridian)) > np.cos(2.0 * spread)
                strongest = (height, (np.abs(radius - r0) <= fwhm) & angular)
        facts.append({"axis_chi_rad": chi0, "streak_sigma_deg": float(np.rad2deg(width)),
                      "streak_power": power, "arcs": arcs})
    image *= setup.maps.polarisation * setup.maps.solid_angle
    expectation, scale = _normalise(image, setup.valid)
    regions = {} if strongest is None else {"meridional_arc": strongest[1] & setup.valid}
    return Scene(name="fibre", expectation=expectation, mask=setup.mask,
                 geometry=setup.geometry, defects=setup.defects, regions=regions,
                 info={**setup.info, "domains": facts, "normalisation": scale})


def _q_to_pixel(qvec: np.ndarray, geometry: DetectorGeometry) -> np.ndarray:
    """Project in-plane q-vectors (nm^-1, (q_row, q_col)) to pixel positions (row, col).

    The radius follows 2θ(|q|) exactly, so pyFAI's q at that pixel equals |q|; the mapping
    is odd in q, so Friedel pairs land at 180°-rotated positions.
    """
    qn = np.linalg.norm(qvec, axis=-1)
    sin_theta = np.clip(qn * geometry.wavelength * 1e9 / (4.0 * np.pi), 0.0, 0.999)
    two_theta = 2.0 * np.arcsin(sin_theta)
    radius = np.where(two_theta < np.deg2rad(80.0),
                      geometry.distance * np.tan(two_theta) / geometry.pixel_size, np.inf)
    unit = qvec / np.maximum(qn, 1e-12)[..., None]
    return np.asarray(geometry.center) + radius[..., None] * unit


def _lattice_model(setup: _Setup, rng: np.random.Generator) -> _LatticeModel:
    a_nm, b_nm = rng.uniform(0.38, 0.5, size=2)
    gamma = float(np.deg2rad(rng.uniform(75.0, 105.0)))
    phi = float(rng.uniform(0.0, 2.0 * np.pi))
    probe = _LatticeModel(a_nm=float(a_nm), b_nm=float(b_nm), gamma_rad=gamma, phi_rad=phi,
                          hk=np.zeros((0, 2), int), intensity=np.zeros(0),
                          modulation=np.zeros(2), one_sided=np.zeros(2), sigma_px=2.0)
    recip = probe.reciprocal()
    q_max = float(setup.maps.q_nm.max()) * 1.3  # margin: the lattice may expand in series
    # Enough (h, k) to cover q_max along the shortest cell height.
    area = abs(np.linalg.det(recip))
    height = area / np.linalg.norm(recip, axis=1).max()
    n = int(np.ceil(q_max / height)) + 1
    h, k = np.meshgrid(np.arange(-n, n + 1), np.arange(-n, n + 1), indexing="ij")
    hk = np.column_stack([h.ravel(), k.ravel()])
    hk = hk[np.any(hk != 0, axis=1)]
    # Friedel's law: one Wilson-distributed value per ±(h, k) pair.
    canonical = np.where(((hk[:, 0] > 0) | ((hk[:, 0] == 0) & (hk[:, 1] > 0)))[:, None],
                         hk, -hk)
    keys, inverse = np.unique(canonical, axis=0, return_inverse=True)
    strength = 0.05 + rng.exponential(1.0, size=len(keys))
    q = np.linalg.norm(hk @ recip, axis=1)
    intensity = strength[inverse.ravel()] * np.exp(-(q / 55.0) ** 2)
    modulation = np.array([0.31, 0.31]) + rng.uniform(-0.03, 0.03, 2)
    one_sided = np.array([0.31, 0.69]) + rng.uniform(-0.03, 0.03, 2)
    return _LatticeModel(a_nm=float(a_nm), b_nm=float(b_nm), gamma_rad=gamma, phi_rad=phi,
                         hk=hk, intensity=intensity, modulation=modulation,
                         one_sided=one_sided, sigma_px=float(rng.uniform(1.5, 2.0)))


def _render_spots(shape: tuple[int, int], positions: np.ndarray, heights: np.ndarray,
                  sigma: float) -> np.ndarray:
    """Sum of round Gaussian spots (cut at 4σ) with the given peak heights."""
    out = np.zeros(shape[0] * shape[1])
    ok = np.all(np.isfinite(positions), axis=1)
    positions, heights = positions[ok], heights[ok]
    w = int(np.ceil(4.0 * sigma))
    inside = ((positions[:, 0] > -w) & (positions[:, 0] < shape[0] + w)
              & (positions[:, 1] > -w) & (positions[:, 1] < shape[1] + w))
    positions, heights = positions[inside], heights[inside]
    if len(positions) == 0:
        return out.reshape(shape)
    offsets = np.arange(-w, w + 1)
    rows = np.rint(positions[:, 0])[:, None, None] + offsets[None, :, None]
    cols = np.rint(positions[:, 1])[:, None, None] + offsets[None, None, :]
    rows, cols = np.broadcast_arrays(rows, cols)
    d2 = (rows - positions[:, 0, None, None]) ** 2 + (cols - positions[:, 1, None, None]) ** 2
    values = heights[:, None, None] * np.exp(-d2 / (2.0 * sigma ** 2))
    keep = ((d2 <= (4.0 * sigma) ** 2) & (rows >= 0) & (rows < shape[0])
            & (cols >= 0) & (cols < shape[1]))
    flat = rows[keep].astype(np.int64) * shape[1] + cols[keep].astype(np.int64)
    out += np.bincount(flat, weights=values[keep], minlength=out.size)
    return out.reshape(shape)


@dataclass(frozen=True)
class _LatticeLayout:
    """Pixel positions of the spots of one frame."""

    main: np.ndarray
    satellites: np.ndarray
    satellite_heights: np.ndarray
    one_sided: np.ndarray  # features (+ one_sided vector) for main spots right of centre


def _lattice_layout(setup: _Setup, model: _LatticeModel, scale: float = 1.0
                    ) -> _LatticeLayout:
    recip = model.reciprocal(scale)
    g = model.hk @ recip
    m = model.modulation @ recip
    main = _q_to_pixel(g, setup.geometry)
    satellites = np.concatenate([_q_to_pixel(g + m, setup.geometry),
                                 _q_to_pixel(g - m, setup.geometry)])
    heights = np.concatenate([model.intensity, model.intensity]) * model.satellite_ratio
    right = main[:, 1] > setup.geometry.center[1]
    features = _q_to_pixel(g[right] + model.one_sided @ recip, setup.geometry)
    rows, cols = setup.geometry.shape
    on_detector = ((features[:, 0] >= 0) & (features[:, 0] <= rows - 1)
                   & (features[:, 1] >= 0) & (features[:, 1] <= cols - 1))
    return _LatticeLayout(main=main, satellites=satellites, satellite_heights=heights,
                          one_sided=features[on_detector])


def _lattice_background(setup: _Setup, rng: np.random.Generator) -> np.ndarray:
    q = setup.maps.q_nm
    return (rng.uniform(0.01, 0.02) + rng.uniform(0.02, 0.04) * np.exp(-q / 15.0)
            + rng.uniform(0.005, 0.01) * np.exp(-0.5 * ((q - 25.0) / 8.0) ** 2))


def _render_lattice(setup: _Setup, model: _LatticeModel, layout: _LatticeLayout
                    ) -> np.ndarray:
    """Main spots and ± satellites (no background, no polarisation)."""
    return _render_spots(setup.geometry.shape,
                         np.concatenate([layout.main, layout.satellites]),
                         np.concatenate([model.intensity, layout.satellite_heights]),
                         model.sigma_px)


def _lattice_regions(setup: _Setup, layout: _LatticeLayout) -> dict[str, np.ndarray]:
    shape = setup.geometry.shape
    return {"bragg_spots": _near(layout.main, shape, _REGION_RADIUS_PX) & setup.valid,
            "satellites": _near(layout.satellites, shape, _REGION_RADIUS_PX) & setup.valid}


def _lattice_info(setup: _Setup, model: _LatticeModel) -> dict[str, Any]:
    recip = model.reciprocal()
    return {**setup.info, "lattice_a_nm": model.a_nm, "lattice_b_nm": model.b_nm,
            "lattice_gamma_deg": float(np.degrees(model.gamma_rad)),
            "orientation_deg": float(np.degrees(model.phi_rad)),
            "reciprocal_nm": recip.tolist(), "modulation_fractional": model.modulation.tolist(),
            "satellite_ratio": model.satellite_ratio, "spot_sigma_px": model.sigma_px}


def _lattice_scene(kind: str, one_sided_counts: float | None, *, shape, center, seed,
                   detector, pixel_size, distance, wavelength, beamstop_radius,
                   arm_angle_deg) -> Scene:
    setup = _setup(kind, shape=shape, center=center, seed=seed, detector=detector,
                   pixel_size=pixel_size, distance=distance, wavelength=wavelength,
                   beamstop_radius=beamstop_radius, arm_angle_deg=arm_angle_deg,
                   optics="wide_angle")
    model = _lattice_model(setup, setup.rng)
    layout = _lattice_layout(setup, model)
    image = _render_lattice(setup, model, layout) + _lattice_background(setup, setup.rng)
    image *= setup.maps.polarisation * setup.maps.solid_angle
    expectation, scale = _normalise(image, setup.valid)
    regions = _lattice_regions(setup, layout)
    info = {**_lattice_info(setup, model), "n_spots_on_detector": int(
        np.sum(np.all((layout.main >= 0) & (layout.main <= np.asarray(shape) - 1), axis=1))),
        "normalisation": scale}
    if one_sided_counts is not None:
        expectation, feature_info, region = _add_one_sided(setup, model, layout, expectation,
                                                           one_sided_counts)
        regions["one_sided_feature"] = region
        info.update(feature_info)
    return Scene(name=kind, expectation=expectation, mask=setup.mask, geometry=setup.geometry,
                 defects=setup.defects, regions=regions, info=info)


def _add_one_sided(setup: _Setup, model: _LatticeModel, layout: _LatticeLayout,
                   expectation: np.ndarray, counts: float
                   ) -> tuple[np.ndarray, dict[str, Any], np.ndarray]:
    """Add unit-integral spots so that, after renormalising to mean 1, each holds ``counts``.

    With F the sum of unit spots and base mean 1: (base + x F) / (1 + x S/n) has spots of
    integral ``counts`` when x = counts / (1 - counts S / n), S = valid sum of F.
    """
    shape = setup.geometry.shape
    heights = np.ones(len(layout.one_sided))
    unit = _render_spots(shape, layout.one_sided, heights, model.sigma_px)
    unit /= _render_spots((4 * int(np.ceil(4 * model.sigma_px)) + 1,) * 2,
                          np.full((1, 2), 2.0 * np.ceil(4 * model.sigma_px)), np.ones(1),
                          model.sigma_px).sum()  # one full spot sums to 1
    valid = setup.valid
    n_valid = valid.sum()
    s_valid = float(unit[valid].sum())
    x = counts / (1.0 - counts * s_valid / n_valid)
    total = expectation + x * unit
    total /= 1.0 + x * s_valid / n_valid
    feature = unit * counts
    region = _near(layout.one_sided, shape, _REGION_RADIUS_PX) & valid
    info = {"one_sided_counts_per_spot": float(counts),
            "one_sided_n_spots": len(layout.one_sided),
            "one_sided_integrated": float(feature.sum()),
            "one_sided_integrated_valid": float(feature[valid].sum()),
            "one_sided_fractional": model.one_sided.tolist(),
            "one_sided_positions": layout.one_sided.tolist()}
    return total, info, region


def crystal_lattice(*, shape: tuple[int, int] = (256, 256),
                    center: tuple[float, float] | None = None, seed: int = 0,
                    detector: str = "Pilatus1M", pixel_size: float | None = None,
                    distance: float | None = None, wavelength: float | None = None,
                    beamstop_radius: float = 8.0, arm_angle_deg: float | None = None
                    ) -> Scene:
    """Single-crystal Bragg spots with weak (1 %) ± modulation satellites.

    A random 2-D lattice (a, b ∈ [0.38, 0.5] nm, γ ∈ [75°, 105°], random orientation) is
    projected onto the detector through 2θ(|q|); spot intensities obey Friedel's law
    (Wilson-distributed, Debye-Waller decay), Gaussian spots of σ = 1.5-2 px. Satellites at
    G ± m carry 1 % of their main spot. Parameters as :func:`isotropic_powder`.

    Returns
    -------
    Scene
        Regions: ``"bragg_spots"``, ``"satellites"`` (within 3 px of centres).
    """
    return _lattice_scene("lattice", None, shape=shape, center=center, seed=seed,
                          detector=detector, pixel_size=pixel_size, distance=distance,
                          wavelength=wavelength, beamstop_radius=beamstop_radius,
                          arm_angle_deg=arm_angle_deg)


def crystal_lattice_one_sided(*, shape: tuple[int, int] = (256, 256),
                              center: tuple[float, float] | None = None, seed: int = 0,
                              detector: str = "Pilatus1M", pixel_size: float | None = None,
                              distance: float | None = None,
                              wavelength: float | None = None, beamstop_radius: float = 8.0,
                              arm_angle_deg: float | None = None,
                              one_sided_counts: float = 50.0) -> Scene:
    """:func:`crystal_lattice` plus spots that have no 180° partner (negative control).

    For every main spot right of the beam centre (col > centre col), a spot at G + m'
    (m' a second, incommensurate vector) is added; nothing sits at -(G + m').

    Parameters
    ----------
    one_sided_counts
        Integrated intensity of each one-sided spot in units of the mean level, i.e.
        counts per spot at 1 count/pixel. Other parameters as :func:`isotropic_powder`.

    Returns
    -------
    Scene
        Regions: as :func:`crystal_lattice` plus ``"one_sided_feature"``. Info:
        ``one_sided_integrated`` (true total), ``one_sided_positions``.
    """
    return _lattice_scene("lattice_one_sided", float(one_sided_counts), shape=shape,
                          center=center, seed=seed, detector=detector,
                          pixel_size=pixel_size, distance=distance, wavelength=wavelength,
                          beamstop_radius=beamstop_radius, arm_angle_deg=arm_angle_deg)


# ---------------------------------------------------------------------------------------
# In situ series
# ---------------------------------------------------------------------------------------
_DEFAULT_AMOUNT = {"ring_drift": 0.7, "lattice_expansion": 0.002, "phase_appearing": 0.6,
                   "phase_flash": 0.6}
_SECOND_PHASE = "LaB6"


def _scale_for_radius(geometry: DetectorGeometry, radius0: float, radius: float) -> float:
    """Real-space scale that moves a feature at ``radius0`` px to ``radius`` px."""
    def sin_theta(r: float) -> float:
        return np.sin(0.5 * np.arctan(r * geometry.pixel_size / geometry.distance))
    return float(sin_theta(radius0) / sin_theta(radius))


def insitu_series(kind: str = "powder", *, n_frames: int = 8, change: str = "ring_drift",
                  amount: float | None = None, shape: tuple[int, int] = (256, 256),
                  center: tuple[float, float] | None = None, seed: int = 0,
                  detector: str = "Pilatus1M", pixel_size: float | None = None,
                  distance: float | None = None, wavelength: float | None = None,
                  beamstop_radius: float = 8.0, arm_angle_deg: float | None = None,
                  calibrant: str = "CeO2") -> SceneSeries:
    """Frames of a scan in which the sample changes slowly.

    Parameters
    ----------
    kind
        ``"powder"`` (isotropic rings) or ``"lattice"`` (spots with satellites).
    n_frames
        Number of frames.
    change
        ``"ring_drift"``: the strongest ring (powder) or strongest spot (lattice) moves
        outwards by ``amount`` px per frame (default 0.7), all features scaling with it;
        ``"lattice_expansion"``: real-space lattice grows by ``amount`` per frame (default
        0.002, i.e. 0.2 %), so rings/spots move inwards; ``"phase_appearing"``: rings of a
        second phase (LaB6) fade in linearly from 0 to ``amount`` × the strongest ring
        (default 0.6); ``"phase_flash"``: the same rings at ``amount`` in frame
        ``n_frames // 2`` only (a transient: they appear abruptly at that frame and vanish
        at the next; ``info["flash_frame"]``).
    amount
        Size of the change, see ``change``.
    shape, center, seed, detector, pixel_size, distance, wavelength, beamstop_radius,
    arm_angle_deg, calibrant
        As :func:`isotropic_powder`.

    Returns
    -------
    SceneSeries
        Regions per frame: ``"strongest_ring"`` (powder) or ``"bragg_spots"`` and
        ``"satellites"`` (lattice), plus ``"new_phase_rings"`` (rings of the second
        phase with at least 20 % of its strongest) for a phase appearing.
    """
    if kind not in ("powder", "lattice"):
        raise ValueError(f"kind must be 'powder' or 'lattice', got {kind!r}")
    if change not in _DEFAULT_AMOUNT:
        raise ValueError(f"change must be one of {sorted(_DEFAULT_AMOUNT)}, got {change!r}")
    if n_frames < 1:
        raise ValueError(f"n_frames must be >= 1, got {n_frames}")
    amount = _DEFAULT_AMOUNT[change] if amount is None else float(amount)
    setup = _setup(f"insitu_{kind}", shape=shape, center=center, seed=seed, detector=detector,
                   pixel_size=pixel_size, distance=distance, wavelength=wavelength,
                   beamstop_radius=beamstop_radius, arm_angle_deg=arm_angle_deg,
                   optics="wide_angle")
    rng = setup.rng
    if kind == "powder":
        model = _powder_model(setup, rng, calibrant=calibrant, textured=False)
        background = _powder_background(setup, rng)
        _, reference_radius = _strongest_ring(setup, model)
    else:
        lattice = _lattice_model(setup, rng)
        background = _lattice_background(setup, rng)
        layout0 = _lattice_layout(setup, lattice)
        radii = np.hypot(*(layout0.main - np.asarray(setup.geometry.center)).T)
        on = np.isfinite(radii) & (radii < 0.45 * min(shape))
        reference_radius = float(radii[on][np.argmax(lattice.intensity[on])])
    second = (_powder_model(setup, rng, calibrant=_SECOND_PHASE, textured=False,
                            strongest_amplitude=1.0)
              if change in ("phase_appearing", "phase_flash") else None)

    if second is not None:
        visible = second.amplitude >= 0.2 * second.amplitude.max()
        new_phase_region = _near_radii(
            setup, _ring_radius_px(second.dspacing_A[visible], setup.geometry),
            second.fwhm_px)
    frames, regions, scales, facts = [], [], [], []
    for n in range(n_frames):
        if change == "ring_drift":
            scale = _scale_for_radius(setup.geometry, reference_radius,
                                      reference_radius + n * amount)
        elif change == "lattice_expansion":
            scale = (1.0 + amount) ** n
        else:
            scale = 1.0
        scales.append(scale)
        if kind == "powder":
            image = _render_rings(setup, model, d_scale=scale)
            ring_facts, ring_region = _ring_facts(setup, model, scale)
            frame_regions = {"strongest_ring": ring_region}
            facts.append(ring_facts)
        else:
            layout = _lattice_layout(setup, lattice, scale)
            image = _render_lattice(setup, lattice, layout)
            frame_regions = _lattice_regions(setup, layout)
        if second is not None:
            if change == "phase_flash":
                weight = amount if n == n_frames // 2 else 0.0
            else:
                weight = amount * (n / (n_frames - 1) if n_frames > 1 else 1.0)
            image = image + _render_rings(setup, second, weight=weight)
            frame_regions["new_phase_rings"] = new_phase_region
        frames.append((image + background) * setup.maps.polarisation * setup.maps.solid_angle)
        regions.append(frame_regions)
    stack = np.stack(frames)
    norm = float(stack[:, setup.valid].mean())
    stack /= norm
    info: dict[str, Any] = {**setup.info, "kind": kind, "change": change, "amount": amount,
                            "n_frames": int(n_frames), "real_space_scale": scales,
                            "normalisation": norm}
    if kind == "powder":
        info["calibrant"] = calibrant
        for key in facts[0]:
            info[key] = [f[key] for f in facts]
    else:
        info.update({k: v for k, v in _lattice_info(setup, lattice).items()
                     if k not in setup.info})
        info["reference_radius_px"] = reference_radius
    if second is not None:
        info["second_phase"] = _SECOND_PHASE
    if change == "phase_flash":
        info["flash_frame"] = n_frames // 2
    return SceneSeries(name=f"insitu_{kind}_{change}", expectations=stack, mask=setup.mask,
                       geometry=setup.geometry, defects=setup.defects, regions=regions,
                       info=info)


# ---------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------
SCENES: dict[str, Callable[..., Scene]] = {
    "powder": isotropic_powder,
    "textured": textured_powder,
    "sharp_textured": sharp_textured_powder,
    "saxs": saxs,
    "fibre": fibre,
    "lattice": crystal_lattice,
    "lattice_one_sided": crystal_lattice_one_sided,
}


def make_scene(kind: str, **kwargs: Any) -> Scene:
    """Build a scene by name (a key of :data:`SCENES`) with generator keyword arguments."""
    try:
        generator = SCENES[kind]
    except KeyError:
        raise ValueError(f"unknown scene kind {kind!r}; choose from {sorted(SCENES)}") from None
    return generator(**kwargs)
