"""Zero-shot Noise2Noise (Mansour & Heckel, CVPR 2023): the single-frame network baseline.

Two diagonal 2x2 downsamplings of one noisy frame see independent noise and (nearly) the
same signal, so they form a Noise2Noise pair. A tiny residual conv net is fitted to map one
onto the other, with a consistency term that ties the full-resolution output to the
half-resolution ones, and is then applied to the full frame.

Here the net works on the Anscombe transform of the counts divided by its mean over valid
pixels (never by the maximum: the absolute scale is restored exactly), and the result goes
back through the exact unbiased inverse Anscombe transform.
"""

from __future__ import annotations

import time

import numpy as np

from bluesky_symdenoise.denoise.classical import (
    ClassicalDenoiseError,
    anscombe,
    fill_masked,
    inverse_anscombe,
)

__all__ = ["zs_noise2noise"]


def _build_net(torch, channels: int):
    nn = torch.nn
    return nn.Sequential(
        nn.Conv2d(1, channels, 3, padding=1),
        nn.LeakyReLU(0.2),
        nn.Conv2d(channels, channels, 3, padding=1),
        nn.LeakyReLU(0.2),
        nn.Conv2d(channels, 1, 1),
    )


def zs_noise2noise(image: np.ndarray, *, mask: np.ndarray | None = None,
                   steps: int = 2000, budget_s: float | None = None, seed: int = 0,
                   device: str = "cpu", channels: int = 48, lr: float = 1e-3,
                   num_threads: int | None = None) -> np.ndarray:
    """Denoise one frame of counts with zero-shot Noise2Noise.

    Parameters
    ----------
    image
        2-D frame of counts (Poisson).
    mask
        True where pixels are invalid; they are filled before fitting, excluded from the
        loss, and set to 0.0 in the output.
    steps
        Adam steps (the paper uses 2000; the learning rate halves at 1000).
    budget_s
        Optional wall-time budget in seconds; fitting stops at whichever comes first.
    seed
        Seed for the network initialisation; the result is deterministic for a seed (on the
        same device and thread count).
    device
        Torch device string.
    channels
        Width of the hidden layers.
    lr
        Adam learning rate.
    num_threads
        Torch intra-op threads for this call only (restored afterwards); ``None`` leaves the
        caller's setting alone.

    Returns
    -------
    numpy.ndarray
        float32 expected counts per pixel, masked pixels 0.0.
    """
    import torch
    import torch.nn.functional as F

    image = np.asarray(image, dtype=np.float64)
    if image.ndim != 2 or min(image.shape) < 4:
        raise ClassicalDenoiseError(f"expected a 2-D frame of at least 4x4, got {image.shape}")
    mask = np.zeros(image.shape, bool) if mask is None else np.asarray(mask, dtype=bool)
    if mask.shape != image.shape:
        raise ClassicalDenoiseError(f"mask shape {mask.shape} does not match {image.shape}")
    if not (~mask).any():
        return np.zeros(image.shape, np.float32)

    z = anscombe(fill_masked(image, mask))
    scale = float(z[~mask].mean())
    scale = scale if scale > 0 else 1.0

    old_threads = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(int(num_threads))
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            dev = torch.device(device)
            y = torch.as_tensor(z / scale, dtype=torch.float32, device=dev)[None, None]
            valid = torch.as_tensor(~mask, dtype=torch.float32, device=dev)[None, None]
            # Odd edges: the downsamplers drop the last row/column.
            rows, cols = (s - s % 2 for s in image.shape)
            y_even = y[..., :rows, :cols]
            k1 = torch.tensor([[[[0.0, 0.5], [0.5, 0.0]]]], device=dev)
            k2 = torch.tensor([[[[0.5, 0.0], [0.0, 0.5]]]], device=dev)

            def down1(x):
                return F.conv2d(x, k1, stride=2)

            def down2(x):
                return F.conv2d(x, k2, stride=2)

            # A half-resolution pixel counts only if all four full-resolution pixels are valid.
            weight = (F.avg_pool2d(valid[..., :rows, :cols], 2) > 0.999).float()
            norm = weight.sum().clamp_min(1.0)

            def wmse(a, b):
                return ((a - b) ** 2 * weight).sum() / norm

            net = _build_net(torch, channels).to(dev)
            opt = torch.optim.Adam(net.parameters(), lr=lr)
            sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1000, gamma=0.5)
            y1, y2 = down1(y_even), down2(y_even)
            start = time.perf_counter()
            for _ in range(int(steps)):
                if budget_s is not None and time.perf_counter() - start > budget_s:
                    break
                pred1 = y1 - net(y1)
                pred2 = y2 - net(y2)
                loss_res = 0.5 * (wmse(pred1, y2) + wmse(pred2, y1))
                den = y_even - net(y_even)
                loss_cons = 0.5 * (wmse(pred1, down1(den)) + wmse(pred2, down2(den)))
                loss = loss_res + loss_cons
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
            with torch.no_grad():
                out = (y - net(y))[0, 0].cpu().numpy().astype(np.float64)
    finally:
        if num_threads is not None:
            torch.set_num_threads(old_threads)

    est = inverse_anscombe(out * scale)
    est[mask] = 0.0
    return est.astype(np.float32)
