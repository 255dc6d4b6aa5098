"""The pre-trained base model shipped with the package, and building fresh networks."""

from __future__ import annotations

import functools
import hashlib
import json
from importlib import resources
from pathlib import Path

import torch

from .channels import N_CHANNELS
from .network import RateUNet

__all__ = ["BASE_MODEL_NAME", "BASE_MODEL_NAMES", "base_model_path", "load_base_model",
           "model_hash", "new_model", "save_model"]

#: The shipped pre-trained models, by network width (channels at full resolution): the
#: default network, and a narrower one that the live plugin fine-tunes on a CPU (less
#: forward time per frame; ``bench/throughput.py --width`` compares them).
BASE_MODEL_NAMES: dict[int, str] = {16: "base_v2", 12: "live_w12_v1"}
BASE_MODEL_NAME = BASE_MODEL_NAMES[16]


def base_model_path(width: int = 16) -> Path:
    """Where the shipped base model of this width lives (may not exist in a checkout)."""
    name = BASE_MODEL_NAMES.get(width, f"base_w{width}")
    return Path(str(resources.files("bluesky_symdenoise") / "models" / f"{name}.pt"))


def new_model(width: int = 16, depth: int = 3, in_channels: int = N_CHANNELS,
              residual: bool = False) -> RateUNet:
    return RateUNet(in_channels, width=width, depth=depth, residual=residual)


def model_hash(model: torch.nn.Module) -> str:
    """Short SHA-256 of a model's weights (provenance)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def save_model(model: RateUNet, path: Path, info: dict) -> None:
    """Save weights (float32) and a JSON card beside them."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"config": model.config(), "state_dict": model.state_dict()}, path)
    card = dict(info, config=model.config(), sha256_16=model_hash(model))
    path.with_suffix(".json").write_text(json.dumps(card, indent=2, sort_keys=True))


@functools.lru_cache(maxsize=4)
def load_base_model(width: int = 16, depth: int = 3) -> tuple[RateUNet | None, str]:
    """The shipped pre-trained model if it matches ``width``/``depth`` (read once, cached).

    Returns ``(model, why)``; ``model`` is None (and ``why`` says so) when no matching weights
    are installed. The model is shared: deep-copy it before training it.
    """
    path = base_model_path(width)
    if not path.exists():
        return None, f"no pre-trained weights for width={width} at {path}"
    saved = torch.load(path, map_location="cpu", weights_only=True)
    config = saved["config"]
    if (config["width"], config["depth"], config["in_channels"]) != (width, depth, N_CHANNELS):
        return None, f"pre-trained weights are {config}, asked for width={width} depth={depth}"
    model = RateUNet(**config)
    model.load_state_dict(saved["state_dict"])
    model.eval()
    return model, f"pre-trained {path.stem} ({model_hash(model)})"
