"""The U-Net's decoder adds two convolutions instead of concatenating (a CPU speed-up)."""

import torch
from torch.nn import functional as F

from bluesky_symdenoise.denoise.network import RateUNet


def _forward_with_concatenation(model: RateUNet, x: torch.Tensor) -> torch.Tensor:
    """The textbook U-Net forward pass, with ``torch.cat`` on the skip connections."""
    skips, h = [], x
    for level, encoder in enumerate(model.encoders):
        h = encoder(h)
        if level < model.depth:
            skips.append(h)
            h = F.max_pool2d(h, 2)
    for upsample, decoder, skip in zip(model.upsamplers, model.decoders, reversed(skips),
                                       strict=True):
        h = F.interpolate(h, scale_factor=2, mode="nearest")
        h = decoder(torch.cat([upsample(h), skip], dim=1))
    return F.softplus(model.head(h))


def test_forward_equals_the_concatenating_u_net():
    torch.manual_seed(0)
    model = RateUNet(in_channels=5, width=8, depth=2).double().eval()
    for layer in model.modules():  # non-trivial weights everywhere, head included
        if isinstance(layer, torch.nn.Conv2d):
            torch.nn.init.normal_(layer.weight, std=0.15)
    x = torch.rand(2, 5, 32, 48, dtype=torch.float64)
    with torch.no_grad():
        expected = _forward_with_concatenation(model, x)
        got = model(x)
        last = model.to(memory_format=torch.channels_last)(
            x.contiguous(memory_format=torch.channels_last))
    assert got.shape == (2, 1, 32, 48)
    assert expected.std() > 0.01
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(last, expected, rtol=1e-10, atol=1e-10)
