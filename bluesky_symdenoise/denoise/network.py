"""A small U-Net that maps input channels to a non-negative Poisson rate.

The network sees counts divided by the frame's mean level ``m`` and a channel holding
``log10(m)``, so it knows the absolute noise level; its output is multiplied back by ``m``.
Nothing is normalised by the image maximum: the absolute scale (which I(q) needs) survives.
"""

from __future__ import annotations

from typing import cast

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["RateUNet"]


class _DoubleConv(nn.Sequential):
    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__(
            nn.Conv2d(c_in, c_out, 3, padding=1),
            nn.LeakyReLU(0.1, inplace=True),
            nn.Conv2d(c_out, c_out, 3, padding=1),
            nn.LeakyReLU(0.1, inplace=True),
        )


class RateUNet(nn.Module):
    """U-Net with ``depth`` poolings and ``width * 2**level`` channels per level.

    Parameters
    ----------
    in_channels
        Number of input channels (see :mod:`bluesky_symdenoise.denoise.channels`).
    width
        Channels at full resolution.
    depth
        Number of 2× down-samplings; inputs must be divisible by ``2**depth`` (the caller
        pads).
    """

    def __init__(self, in_channels: int, width: int = 16, depth: int = 3,
                 residual: bool = False) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.width = width
        self.depth = depth
        #: Learn a correction to input channel 0 (a first estimate) instead of the rate.
        self.residual = residual
        widths = [width * 2**level for level in range(depth + 1)]
        self.encoders = nn.ModuleList()
        c_prev = in_channels
        for w in widths:
            self.encoders.append(_DoubleConv(c_prev, w))
            c_prev = w
        self.upsamplers = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for w_skip, w_deep in zip(reversed(widths[:-1]), reversed(widths[1:]), strict=True):
            self.upsamplers.append(nn.Conv2d(w_deep, w_skip, 1))
            self.decoders.append(_DoubleConv(2 * w_skip, w_skip))
        self.head = nn.Conv2d(width, 1, 1)
        bias = self.head.bias
        assert bias is not None  # Conv2d's default bias=True
        if residual:  # start at the first estimate itself
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(bias)
        else:  # start at the mean level (inputs are normalised to mean 1)
            nn.init.constant_(bias, float(_inverse_softplus(torch.tensor(1.0))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the normalised rate (≥ 0), shape ``(B, 1, H, W)``."""
        skips = []
        h = x
        for level, encoder in enumerate(self.encoders):
            h = encoder(h)
            if level < self.depth:
                skips.append(h)
                h = F.max_pool2d(h, 2)
        for upsample, decoder, skip in zip(self.upsamplers, self.decoders, reversed(skips),
                                           strict=True):
            h = F.interpolate(h, scale_factor=2, mode="nearest")
            block = cast(_DoubleConv, decoder)
            h = _conv_of_concat(cast(nn.Conv2d, block[0]), upsample(h), skip)
            for layer in list(block)[1:]:
                h = layer(h)
        out = self.head(h)
        if self.residual:
            out = out + _inverse_softplus(x[:, :1].float().clamp(min=1e-3))
        return F.softplus(out)

    def config(self) -> dict[str, int | bool]:
        config: dict[str, int | bool] = {"in_channels": self.in_channels, "width": self.width,
                                         "depth": self.depth}
        if self.residual:
            config["residual"] = True
        return config


def _conv_of_concat(conv: nn.Conv2d, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``conv(torch.cat([a, b], dim=1))`` without building the concatenation.

    The convolution is linear in its input channels, so it is the sum of two convolutions
    with the two halves of the weights. On a CPU with channels-last tensors the copy that
    ``torch.cat`` makes is a noticeable part of a forward pass; the sum does not (equal to
    float rounding).
    """
    split = a.shape[1]
    return (F.conv2d(a, conv.weight[:, :split], None, conv.stride, conv.padding)
            + F.conv2d(b, conv.weight[:, split:], conv.bias, conv.stride, conv.padding))


def _inverse_softplus(y: torch.Tensor) -> torch.Tensor:
    return y + torch.log(-torch.expm1(-y))
