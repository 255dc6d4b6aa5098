"""Dark frames in a run: taken apart from the scan's frames, subtracted once and only once.

An integrating detector (flat panel, CCD, CMOS) records a dark level under its signal.
bluesky-darkframes takes dark frames with the shutter closed and publishes them in a stream
of their own (``"dark"``); its ``DarkSubtraction`` router subtracts them upstream and marks
the light stream with a ``<field>_is_background_subtracted`` data key, keeping a
``pedestal`` (its descriptor's configuration) so that the result stays positive:
``light - (dark - pedestal)``. :class:`DarkFrames` reads both:

* frames of a dark stream are darks, never scan frames: the latest is kept;
* frames marked as subtracted upstream are taken as they are; their dark level is the
  pedestal (the detector's offset);
* other frames of an integrating detector, in a run with a dark stream, are subtracted here
  (``frame - dark``) before the plugin sees them, so a frame is never subtracted twice.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["DARK_STREAMS", "SUBTRACTED_SUFFIX", "DarkFrames"]

#: Stream names that hold dark frames (bluesky-darkframes' default).
DARK_STREAMS: tuple[str, ...] = ("dark",)
#: The data key suffix bluesky-darkframes' DarkSubtraction adds to the field it subtracted.
SUBTRACTED_SUFFIX = "_is_background_subtracted"


class DarkFrames:
    """One run's dark frames and which of its light streams were subtracted upstream.

    Feed it every descriptor (:meth:`descriptor`); then, per frame, ask :meth:`is_dark` and
    either :meth:`keep` the dark or pass the light frame through :meth:`light`.
    """

    def __init__(self) -> None:
        self._dark_descriptors: set[str] = set()
        #: Light descriptor uid -> pedestal (ADU) of the subtraction done upstream.
        self._subtracted: dict[str, float] = {}
        self.dark: np.ndarray | None = None
        #: Darks received, and light frames this plugin subtracted a dark from.
        self.darks_seen = 0
        self.subtracted_here = 0

    def descriptor(self, doc: dict[str, Any]) -> None:
        """Note whether a descriptor is a dark stream's, or a light stream's that was
        subtracted upstream (and its pedestal)."""
        if doc.get("name") in DARK_STREAMS:
            self._dark_descriptors.add(doc["uid"])
            return
        for key in doc.get("data_keys", {}):
            if key.endswith(SUBTRACTED_SUFFIX):
                field = key[: -len(SUBTRACTED_SUFFIX)]
                config = doc.get("configuration", {}).get(f"{field}_DarkSubtraction", {})
                pedestal = config.get("data", {}).get("pedestal", 0.0)
                try:
                    self._subtracted[doc["uid"]] = float(pedestal)
                except (TypeError, ValueError):
                    self._subtracted[doc["uid"]] = 0.0

    def is_dark(self, descriptor_uid: str | None) -> bool:
        """Whether frames of this descriptor are darks."""
        return descriptor_uid in self._dark_descriptors

    def keep(self, frame: np.ndarray) -> None:
        """Keep a dark frame (the latest one is subtracted from what follows)."""
        self.dark = np.asarray(frame, np.float32).copy()
        self.darks_seen += 1

    @property
    def pedestal(self) -> float | None:
        """The pedestal of an upstream subtraction in this run, or None if there was none."""
        return next(iter(self._subtracted.values()), None)

    def light(self, descriptor_uid: str | None, frame: np.ndarray, *,
              subtract: bool) -> np.ndarray:
        """A light frame as the plugin takes it: as it is when subtracted upstream (or when
        ``subtract`` is False or no dark is known yet), else minus the latest dark."""
        if (not subtract or descriptor_uid in self._subtracted or self.dark is None
                or self.dark.shape != frame.shape):
            return frame
        self.subtracted_here += 1
        return np.asarray(frame, np.float32) - self.dark

    def summary(self) -> dict[str, Any]:
        """JSON-safe record for provenance."""
        return {"dark_frames_seen": self.darks_seen,
                "subtracted_upstream": self.pedestal is not None,
                "pedestal": self.pedestal,
                "frames_subtracted_here": self.subtracted_here}
