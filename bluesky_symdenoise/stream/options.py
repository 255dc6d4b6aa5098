"""What :class:`~bluesky_symdenoise.SymDenoise` was configured with: one validated object.

Built in ``SymDenoise.__init__``, so a typo or an out-of-range value fails in the user's own
line (a :class:`pydantic.ValidationError`, a ``ValueError``, naming the valid choices), not
later on the worker thread.
"""

from __future__ import annotations

import difflib
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..denoise.config import DEVICE_PATTERN, DEVICES, DenoiseConfig, Method

__all__ = ["LiveOptions"]


class LiveOptions(BaseModel):
    """Every setting of one :class:`~bluesky_symdenoise.SymDenoise` (see its parameters).

    ``method``, ``device`` and the ``config`` dict given at construction make up
    :attr:`denoise`, the :class:`~bluesky_symdenoise.DenoiseConfig` of every scan (a
    ``device`` in ``config`` wins over the keyword); :attr:`asked` keeps which of its fields
    the user set (the live CPU settings fill the others).

    Raises
    ------
    pydantic.ValidationError
        A ``ValueError``: an unknown method, device or ``config`` field (the message names
        the valid ones), or a value out of range.

    Examples
    --------
    >>> LiveOptions(method="symmetry", config={"width": 8}).denoise.width
    8
    """

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)

    field: str | None = None
    poni: str | Path | dict[str, Any] | None = None
    center: tuple[float, float] | None = None
    mask: np.ndarray | str | Path | None = None
    method: Method = "auto"
    device: str = "auto"
    budget_s: float | None = Field(default=None, ge=0)
    max_queue: int = Field(default=64, ge=1)
    lossless: bool = False
    warmup_frames: int = Field(default=4, ge=1)
    npt: int | None = Field(default=None, ge=2)
    sector: tuple[float, float] | None = None
    cake: bool | tuple[int, int] = False
    min_training_steps: int = Field(default=10, ge=0)
    derived_files: Path | None = None
    inline_limit_bytes: int = Field(default=1_000_000, ge=0)
    denoise: DenoiseConfig = Field(default_factory=DenoiseConfig)
    asked: tuple[str, ...] = ()

    @model_validator(mode="before")
    @classmethod
    def _denoise_config(cls, values: Any) -> Any:
        """``config`` (a dict of DenoiseConfig fields) with ``method`` and ``device`` ->
        ``denoise`` and ``asked``."""
        if not isinstance(values, dict) or "denoise" in values:
            return values
        values = dict(values)
        config = dict(values.pop("config", None) or {})
        fields = list(DenoiseConfig.model_fields)
        for name in config:
            if name not in fields:
                close = difflib.get_close_matches(str(name), fields, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ValueError(f"config: {name!r} is not a DenoiseConfig field{hint}; the "
                                 f"fields are {', '.join(fields)}")
        method = values.get("method", "auto")
        if "method" in config and config["method"] != method:
            raise ValueError(f"config={{'method': {config['method']!r}}}: pass "
                             f"method={config['method']!r} instead")
        values["asked"] = tuple(name for name in config if name != "method")
        config.setdefault("device", values.get("device", "auto"))
        values["denoise"] = {**config, "method": method}
        return values

    @field_validator("device")
    @classmethod
    def _known_device(cls, device: str) -> str:
        if not re.fullmatch(DEVICE_PATTERN, device):
            raise ValueError(f"device must be one of {', '.join(map(repr, DEVICES))} or "
                             f"'cuda:N', got {device!r}")
        return device

    @field_validator("center", "sector", mode="before")
    @classmethod
    def _pair_of_numbers(cls, value: Any) -> Any:
        if value is None:
            return None
        try:
            pair = tuple(float(v) for v in value)
        except (TypeError, ValueError):
            pair = ()
        if len(pair) != 2 or not all(math.isfinite(v) for v in pair):
            raise ValueError(f"must be two finite numbers, got {value!r}")
        return pair

    @field_validator("mask", mode="before")
    @classmethod
    def _mask_array(cls, value: Any) -> Any:
        if value is None or isinstance(value, str | Path):
            return value
        return np.asarray(value).astype(bool)

    @field_validator("derived_files", mode="before")
    @classmethod
    def _directory(cls, value: Any) -> Any:
        if value is None:
            return None
        if not isinstance(value, str | Path) or not str(value):
            raise ValueError(f"derived_files must be a directory path, got {value!r}")
        path = Path(value).expanduser()
        if path.exists() and not path.is_dir():
            raise ValueError(f"derived_files={str(value)!r} is a file, not a directory")
        return path

    @field_validator("cake", mode="before")
    @classmethod
    def _cake_binning(cls, cake: Any) -> Any:
        if not (isinstance(cake, bool) or (
                isinstance(cake, tuple | list) and len(cake) == 2
                and all(isinstance(n, int) and not isinstance(n, bool) and n > 0
                        for n in cake))):
            raise ValueError(f"cake must be True/False or (npt_rad, npt_azim) positive "
                             f"integers, got {cake!r}")
        return tuple(cake) if isinstance(cake, list) else cake
