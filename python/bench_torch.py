#!/usr/bin/env python3
"""PyTorch side of `cryoden bench train` and `cryoden bench denoise`: the same U-Net, batch and step (forward,
MSE/L1, backward, Adam), or (`--mode infer`) the same forward pass alone over batches of denoising windows.

Architecture (cryoden `unet`): per level two 3x3 conv + ReLU, 2x2 max-pool between levels, ConvTranspose2d(2, 2)
upsampling, concat [up, skip], two 3x3 conv + ReLU, 1x1 output conv. Parameter names equal cryoden's, so a
cryoden checkpoint loads with `model.load_state_dict(safetensors.torch.load_file(path))`.
`--arch topaz-unet[-small]` times Topaz 0.3.20's UDenoiseNet / UDenoiseNetSmall (needs `topaz-em` installed).

Examples:
  python3 python/bench_torch.py --widths 16,32,64,128 --size 128 --batch 8 --steps 20 --threads 2 --json
  python3 python/bench_torch.py --device cuda --size 1024 --batch 8 --dtype bf16 --channels-last --compile --json
  python3 python/bench_torch.py --mode infer --device cuda --size 1136 --batch 8 --dtype bf16 --channels-last --json

`--mode infer` is PyTorch's best eager inference (model.eval(), torch.inference_mode(), bf16 autocast,
channels_last, cudnn.benchmark; `--compile` adds torch.compile): Mpixel/s of network input windows, the batch already
on the GPU (no file I/O, no tiling), so it is an upper bound for a PyTorch denoising pipeline.
"""
import argparse
import json
import resource
import statistics
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class UNet(nn.Module):
    """cryoden's `unet` (crates/nn/src/models/unet.rs), layer for layer."""

    def __init__(self, widths):
        super().__init__()
        assert len(widths) >= 2
        self.widths = list(widths)
        d = len(widths)
        for l, w in enumerate(widths):
            cin = 1 if l == 0 else widths[l - 1]
            self.add_module(f"enc{l}", nn.ModuleDict({"conv1": nn.Conv2d(cin, w, 3, padding=1),
                                                      "conv2": nn.Conv2d(w, w, 3, padding=1)}))
        for l in range(d - 1):
            self.add_module(f"up{l}", nn.ConvTranspose2d(widths[l + 1], widths[l], 2, stride=2))
            self.add_module(f"dec{l}", nn.ModuleDict({"conv1": nn.Conv2d(2 * widths[l], widths[l], 3, padding=1),
                                                      "conv2": nn.Conv2d(widths[l], widths[l], 3, padding=1)}))
        self.out = nn.Conv2d(widths[0], 1, 1)

    def forward(self, x):
        d = len(self.widths)
        skips = []
        for l in range(d):
            enc = getattr(self, f"enc{l}")
            x = F.relu(enc["conv2"](F.relu(enc["conv1"](x))))
            if l + 1 < d:
                skips.append(x)
                x = F.max_pool2d(x, 2)
        for l in reversed(range(d - 1)):
            x = torch.cat([getattr(self, f"up{l}")(x), skips[l]], 1)
            dec = getattr(self, f"dec{l}")
            x = F.relu(dec["conv2"](F.relu(dec["conv1"](x))))
        return self.out(x)


def build(arch, widths):
    if arch == "unet":
        return UNet(widths)
    from topaz.denoising.models import UDenoiseNet, UDenoiseNetSmall
    if arch == "topaz-unet":
        return UDenoiseNet(base_width=11, top_width=5)
    if arch == "topaz-unet-small":
        return UDenoiseNetSmall(width=11, top_width=5)
    raise SystemExit(f"unknown --arch {arch}")


def conv_flops(model, n, h, w):
    """Forward FLOPs (2 x multiply-adds) of convs and transposed convs, counted with forward hooks."""
    total = [0.0]

    def hook(mod, inp, out):
        if isinstance(mod, nn.Conv2d):
            k = mod.kernel_size[0] * mod.kernel_size[1]
            total[0] += 2.0 * out.numel() * mod.in_channels * k / mod.groups
        elif isinstance(mod, nn.ConvTranspose2d):
            k = mod.kernel_size[0] * mod.kernel_size[1]
            total[0] += 2.0 * inp[0].numel() * mod.out_channels * k

    hs = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    with torch.no_grad():
        model(torch.zeros(n, 1, h, w))
    for h_ in hs:
        h_.remove()
    return total[0]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="unet")
    ap.add_argument("--widths", default="32,64,128,256")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0 = torch's default)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "tf32", "bf16"],
                    help="fp32 (TF32 off), tf32 (TF32 on for conv and matmul), bf16 (autocast, fp32 master weights)")
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--compile", action="store_true", help="torch.compile the model")
    ap.add_argument("--loss", default="mse", choices=["mse", "l1"])
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--mode", default="train", choices=["train", "infer"],
                    help="train: a training step; infer: forward only under torch.inference_mode")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    if a.mode == "infer":
        return infer(a)

    if a.threads > 0:
        torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    dev = torch.device(a.device)
    if a.device == "cuda":
        tf32 = a.dtype == "tf32"
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
        torch.backends.cudnn.benchmark = True
    widths = [int(v) for v in a.widths.split(",")]
    model = build(a.arch, widths)
    flops_fwd = conv_flops(model, a.batch, a.size, a.size)
    nparams = sum(p.numel() for p in model.parameters())
    model = model.to(dev)
    mf = torch.channels_last if a.channels_last else torch.contiguous_format
    model = model.to(memory_format=mf)
    opt = torch.optim.Adam(model.parameters(), lr=a.lr)
    step_model = torch.compile(model) if a.compile else model
    g = torch.Generator().manual_seed(a.seed)
    x = (torch.rand(a.batch, 1, a.size, a.size, generator=g) * 2 - 1)
    y = x + (torch.rand(x.shape, generator=g) - 0.5)
    x = x.to(dev).contiguous(memory_format=mf)
    y = y.to(dev).contiguous(memory_format=mf)
    loss_fn = F.mse_loss if a.loss == "mse" else F.l1_loss

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(a.device, dtype=torch.bfloat16, enabled=a.dtype == "bf16"):
            out = step_model(x)
        loss = loss_fn(out.float(), y)
        loss.backward()
        opt.step()
        return loss

    def sync():
        if a.device == "cuda":
            torch.cuda.synchronize()

    times = []
    losses = []
    for s in range(a.warmup + a.steps):
        sync()
        t0 = time.perf_counter()
        l = step()
        sync()
        dt = (time.perf_counter() - t0) * 1e3
        losses.append(float(l.detach()))
        if s >= a.warmup:
            times.append(dt)
    mean = sum(times) / len(times)
    gflop = 3.0 * flops_fwd / 1e9
    res = {
        "impl": "pytorch",
        "torch": torch.__version__,
        "device": a.device if a.device == "cpu" else torch.cuda.get_device_name(0),
        "threads": torch.get_num_threads(),
        "arch": a.arch,
        "widths": widths if a.arch == "unet" else None,
        "batch": a.batch,
        "size": a.size,
        "steps": a.steps,
        "dtype": a.dtype,
        "channels_last": a.channels_last,
        "compile": a.compile,
        "params": nparams,
        "ms_per_step": mean,
        "ms_per_step_median": statistics.median(times),
        "images_per_s": a.batch / (mean / 1e3),
        "gflop_per_step": gflop,
        "gflop_per_s": gflop / (mean / 1e3),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "first_loss": losses[0],
        "last_loss": losses[-1],
    }
    if a.device == "cuda":
        res["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
    if a.json:
        print(json.dumps(res))
    else:
        print(f"pytorch {a.arch} {a.batch}x{a.size}x{a.size} on {res['device']} ({res['threads']} threads): "
              f"{mean:.1f} ms/step (median {res['ms_per_step_median']:.1f}), {res['images_per_s']:.1f} images/s, "
              f"{res['gflop_per_s']:.1f} GFLOP/s", file=sys.stdout)


def infer(a):
    """Forward passes only: batches of `size`² windows, as a denoiser runs them."""
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    dev = torch.device(a.device)
    if a.device == "cuda":
        tf32 = a.dtype == "tf32"
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
        torch.backends.cudnn.benchmark = True
    widths = [int(v) for v in a.widths.split(",")]
    model = build(a.arch, widths)
    flops_fwd = conv_flops(model, 1, min(a.size, 256), min(a.size, 256)) * (a.batch * a.size * a.size) / (
        min(a.size, 256) ** 2)
    nparams = sum(p.numel() for p in model.parameters())
    mf = torch.channels_last if a.channels_last else torch.contiguous_format
    model = model.to(dev).to(memory_format=mf).eval()
    run_model = torch.compile(model) if a.compile else model
    g = torch.Generator().manual_seed(a.seed)
    x = torch.randn(a.batch, 1, a.size, a.size, generator=g).to(dev).contiguous(memory_format=mf)

    def sync():
        if a.device == "cuda":
            torch.cuda.synchronize()

    times = []
    with torch.inference_mode():
        for s in range(a.warmup + a.steps):
            sync()
            t0 = time.perf_counter()
            with torch.autocast(a.device, dtype=torch.bfloat16, enabled=a.dtype == "bf16"):
                out = run_model(x)
            out = out.float()
            sync()
            if s >= a.warmup:
                times.append((time.perf_counter() - t0) * 1e3)
    mean = sum(times) / len(times)
    mpx = a.batch * a.size * a.size / 1e6
    res = {
        "impl": "pytorch",
        "mode": "infer",
        "torch": torch.__version__,
        "device": a.device if a.device == "cpu" else torch.cuda.get_device_name(0),
        "arch": a.arch,
        "widths": widths if a.arch == "unet" else None,
        "batch": a.batch,
        "size": a.size,
        "steps": a.steps,
        "dtype": a.dtype,
        "channels_last": a.channels_last,
        "compile": a.compile,
        "params": nparams,
        "ms_per_batch": mean,
        "ms_per_batch_median": statistics.median(times),
        "mpixel_per_s": mpx / (mean / 1e3),
        "tflop_per_s": flops_fwd / 1e12 / (mean / 1e3),
    }
    if a.device == "cuda":
        res["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
    if a.json:
        print(json.dumps(res))
    else:
        print(f"pytorch infer {a.arch} {a.batch}x{a.size}x{a.size} on {res['device']} ({a.dtype}): "
              f"{mean:.2f} ms/batch, {res['mpixel_per_s']:.1f} Mpixel/s, {res['tflop_per_s']:.1f} TFLOP/s")


if __name__ == "__main__":
    main()
