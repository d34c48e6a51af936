"""Whose f32 gradient is off? PyTorch's f32 gradient of a verify.py configuration, on the CPU and on the GPU
(cuDNN, TF32 off, deterministic), against the same model in float64 on the CPU (the reference).

    python python/grad_vs_f64.py [--arch topaz-unet] [--seeds 0,1,2]

Prints, per seed, the relative L2 of the whole gradient (all parameters as one vector) and of the worst single
tensor. Written for the open question in docs/CUDA.md ("verify.py --device cuda"): cryoden's CUDA f32 gradient of
topaz-unet was 1.94e-5 from PyTorch-on-the-GPU's, while it is 2.2e-7 from cryoden's CPU reference.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from models import arch_json, build  # noqa: E402
from verify import CONFIGS, batch  # noqa: E402


def grads(model, x, t, device, dtype):
    m = copy.deepcopy(model).to(device=device, dtype=dtype)
    m.zero_grad()
    y = m(x.to(device=device, dtype=dtype))
    torch.nn.functional.mse_loss(y, t.to(device=device, dtype=dtype)).backward()
    return {k: p.grad.detach().to("cpu", torch.float64) for k, p in m.named_parameters()}


def rel(a, b):
    num = sum(((a[k] - b[k]) ** 2).sum() for k in a)
    den = sum((b[k] ** 2).sum() for k in b)
    worst = max((((a[k] - b[k]).norm() / b[k].norm()).item(), k) for k in a)
    return (num / den).sqrt().item(), worst


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="topaz-unet", choices=sorted(CONFIGS))
    ap.add_argument("--seeds", default="0,1,2")
    args = ap.parse_args()
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.deterministic = True
    c = CONFIGS[args.arch]
    for seed in [int(s) for s in args.seeds.split(",")]:
        torch.manual_seed(seed)
        model = build(json.loads(arch_json(c["arch"], c["widths"])))
        gen = torch.Generator().manual_seed(seed + 1)
        x, t = batch(gen, c["batch"], c["height"], c["width"])
        ref = grads(model, x, t, "cpu", torch.float64)
        row = {"arch": args.arch, "seed": seed}
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
        for dev in devices:
            whole, (worst, name) = rel(grads(model, x, t, dev, torch.float32), ref)
            row[f"{dev}_f32_vs_f64"] = f"{whole:.2e}"
            row[f"{dev}_worst"] = f"{name} {worst:.2e}"
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
