"""PyTorch references of cryoden's networks, loading cryoden's safetensors checkpoints by name.

- `unet`: the plan's U-Net (crates/nn/src/models/unet.rs), written here from its specification:
  encoder level l = 0..D-1: conv3x3 + ReLU, conv3x3 + ReLU (`enc{l}.conv1`, `enc{l}.conv2`), 2x2 max-pool between
  levels; decoder l = D-2..0: `up{l}` = ConvTranspose2d(w[l+1] -> w[l], 2, stride 2), cat([up, skip_l], dim=1),
  `dec{l}.conv1` (2 w[l] -> w[l]) + ReLU, `dec{l}.conv2` (w[l] -> w[l]) + ReLU; `out` = conv1x1 (w[0] -> 1).
- `topaz-unet`, `topaz-unet-small`: Topaz 0.3.20's own `UDenoiseNet(nf=48, base_width=11, top_width=5)` and
  `UDenoiseNetSmall(nf=48, width=11, top_width=5)`, imported from the installed topaz package (GPLv3, installed
  with --no-deps by scripts/setup-python.sh), so parity is with Topaz's code itself, not a copy.

    from models import load_checkpoint
    model = load_checkpoint("model.safetensors")     # architecture from the file's metadata
    y = model(x)                                      # x: [N, 1, H, W] float32

Checkpoint metadata (written by crates/nn/src/checkpoint.rs): `format` = `cryoden-weights`, `version`, `arch`
(JSON such as {"name": "unet", "widths": [32, 64, 128, 256]} or {"name": "topaz-unet"}) and `meta` (JSON).
"""
from __future__ import annotations

import json
from typing import Sequence

import torch
from torch import nn

DEFAULT_UNET_WIDTHS = (32, 64, 128, 256)


class DoubleConv(nn.Module):
    """conv3x3 + ReLU, conv3x3 + ReLU (zero padding 1)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv2(torch.relu(self.conv1(x))))


class UNet(nn.Module):
    """cryoden's `unet`; input sides must be multiples of 2^(D-1)."""

    def __init__(self, widths: Sequence[int] = DEFAULT_UNET_WIDTHS):
        super().__init__()
        widths = list(widths)
        if len(widths) < 2 or min(widths) < 1:
            raise ValueError(f"unet needs at least 2 positive widths, got {widths}")
        self.widths = widths
        d = len(widths)
        for l, w in enumerate(widths):
            self.add_module(f"enc{l}", DoubleConv(1 if l == 0 else widths[l - 1], w))
        for l in range(d - 1):
            self.add_module(f"up{l}", nn.ConvTranspose2d(widths[l + 1], widths[l], 2, stride=2))
            self.add_module(f"dec{l}", DoubleConv(2 * widths[l], widths[l]))
        self.out = nn.Conv2d(widths[0], 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = len(self.widths)
        skips = []
        for l in range(d):
            if l > 0:
                x = nn.functional.max_pool2d(x, 2)
            x = getattr(self, f"enc{l}")(x)
            skips.append(x)
        for l in range(d - 2, -1, -1):
            up = getattr(self, f"up{l}")(x)  # [N, w_l, H_l, W_l]
            x = torch.cat([up, skips[l]], dim=1)  # up first, then the skip
            x = getattr(self, f"dec{l}")(x)
        return self.out(x)


def topaz_unet() -> nn.Module:
    """Topaz's `unet` pretrained architecture (unet_L2_v0.2.2.sav)."""
    from topaz.denoising.models import UDenoiseNet

    return UDenoiseNet(nf=48, base_width=11, top_width=5)


def topaz_unet_small() -> nn.Module:
    """Topaz's `unet-small` pretrained architecture (unet_small_L1_v0.2.2.sav)."""
    from topaz.denoising.models import UDenoiseNetSmall

    return UDenoiseNetSmall(nf=48, width=11, top_width=5)


def build(arch: dict) -> nn.Module:
    """A model from cryoden's architecture description (the `arch` metadata of a checkpoint)."""
    name = arch.get("name")
    if name == "unet":
        return UNet(arch.get("widths", DEFAULT_UNET_WIDTHS))
    if name == "topaz-unet":
        return topaz_unet()
    if name == "topaz-unet-small":
        return topaz_unet_small()
    raise ValueError(f"unknown architecture {arch!r}: expected unet, topaz-unet or topaz-unet-small")


def read_metadata(path: str) -> dict:
    from safetensors import safe_open

    with safe_open(path, framework="pt") as f:
        return f.metadata() or {}


def load_checkpoint(path: str, device: str = "cpu") -> nn.Module:
    """Builds the network named in a cryoden weights file and loads its tensors by name (strictly)."""
    from safetensors.torch import load_file

    md = read_metadata(path)
    if md.get("format") != "cryoden-weights" or "arch" not in md:
        raise ValueError(f"{path}: not a cryoden weights file (metadata format={md.get('format')!r})")
    model = build(json.loads(md["arch"]))
    model.load_state_dict(load_file(path, device="cpu"), strict=True)
    return model.to(device).eval()


def arch_json(name: str, widths: Sequence[int] | None = None) -> str:
    """cryoden's JSON for an architecture, as written in checkpoint metadata."""
    if name == "unet":
        return json.dumps({"name": "unet", "widths": list(widths or DEFAULT_UNET_WIDTHS)})
    return json.dumps({"name": name})
