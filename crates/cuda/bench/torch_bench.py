#!/usr/bin/env python3
"""PyTorch side of the GPU measurements (run in the same device call as `cudabench`, so ratios hold).

    python3 crates/cuda/bench/torch_bench.py ops   [--batch 8] [--size 1024] [--modes fp32,tf32,bf16]
    python3 crates/cuda/bench/torch_bench.py train [--batch 8] [--size 1024] [--modes fp32,tf32,bf16,bf16-compile]

Modes: fp32 = TF32 off (torch.backends.cudnn.allow_tf32 = False), NCHW; tf32 = PyTorch's default for cuDNN conv,
NCHW; bf16 = torch.autocast(bfloat16) + channels_last; bf16-compile = that + torch.compile. cudnn.benchmark on.
The model is python/models.py's UNet (the same network as crates/nn's `unet`). Timing: CUDA events, median.
Lines starting with JSON carry the numbers.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "python"))
from models import UNet  # noqa: E402

WIDTHS = (32, 64, 128, 256)


def set_mode(mode: str) -> None:
    torch.backends.cudnn.benchmark = True
    tf32 = mode == "tf32"
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32


def time_ms(fn, reps: int = 20, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        a = torch.cuda.Event(enable_timing=True)
        b = torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


def ops(args) -> None:
    n, s = args.batch, args.size
    print(f"{'mode':<6} {'op':<44} {'fwd ms':>9} {'bwd-d ms':>9} {'bwd-f ms':>9} {'TFLOP/s':>8}")
    for mode in args.modes.split(","):
        set_mode(mode)
        dt = torch.bfloat16 if mode.startswith("bf16") else torch.float32
        fmt = torch.channels_last if mode.startswith("bf16") else torch.contiguous_format
        geoms = []
        for l, w in enumerate(WIDTHS):
            r = s >> l
            cin = 1 if l == 0 else WIDTHS[l - 1]
            geoms.append((r, cin, w, 3))
            geoms.append((r, w, w, 3))
            if l + 1 < len(WIDTHS):
                geoms.append((r, 2 * w, w, 3))
        geoms.append((s, WIDTHS[0], 1, 1))
        for r, cin, cout, k in geoms:
            x = torch.randn(n, cin, r, r, device="cuda", dtype=dt).to(memory_format=fmt)
            w = (torch.randn(cout, cin, k, k, device="cuda", dtype=dt) / (cin * k * k) ** 0.5).to(memory_format=fmt)
            dy = torch.randn(n, cout, r, r, device="cuda", dtype=dt).to(memory_format=fmt)
            pad = k // 2
            f = time_ms(lambda: F.conv2d(x, w, padding=pad))
            bd = time_ms(lambda: torch.ops.aten.convolution_backward(
                dy, x, w, None, [1, 1], [pad, pad], [1, 1], False, [0, 0], 1, [True, False, False]))
            bf = time_ms(lambda: torch.ops.aten.convolution_backward(
                dy, x, w, None, [1, 1], [pad, pad], [1, 1], False, [0, 0], 1, [False, True, False]))
            macs = n * r * r * cout * cin * k * k
            tflops = 3 * 2 * macs / ((f + bd + bf) * 1e-3) / 1e12
            name = f"conv{k}x{k} {cin}->{cout} on {n}x{r}x{r}"
            print(f"{mode:<6} {name:<44} {f:>9.3f} {bd:>9.3f} {bf:>9.3f} {tflops:>8.1f}")
            print("JSON", json.dumps({"kind": "conv", "framework": "torch", "mode": mode, "op": name, "fwd_ms": f,
                                      "bwd_data_ms": bd, "bwd_filter_ms": bf, "tflops": tflops}))
            del x, w, dy
        torch.cuda.empty_cache()


def train(args) -> None:
    n, s = args.batch, args.size
    print(f"{'mode':<13} {'ms/step':>9} {'img/s':>8} {'peak GiB':>9}")
    for mode in args.modes.split(","):
        set_mode(mode)
        torch.manual_seed(0)
        bf16 = mode.startswith("bf16")
        fmt = torch.channels_last if bf16 else torch.contiguous_format
        model = UNet(WIDTHS).cuda().to(memory_format=fmt)
        opt = torch.optim.Adam(model.parameters(), lr=1e-4)
        x = (torch.rand(n, 1, s, s, device="cuda") - 0.5).to(memory_format=fmt)
        t = x + 0.1 * torch.randn_like(x)
        fwd = torch.compile(model) if mode.endswith("compile") else model

        def step():
            opt.zero_grad(set_to_none=True)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
                y = fwd(x)
            loss = F.mse_loss(y.float(), t)
            loss.backward()
            opt.step()
            return loss

        torch.cuda.reset_peak_memory_stats()
        warm = 6 if mode.endswith("compile") else 3
        ms = time_ms(step, reps=args.steps, warmup=warm)
        peak = torch.cuda.max_memory_allocated() / 2**30
        ips = n / (ms * 1e-3)
        print(f"{mode:<13} {ms:>9.2f} {ips:>8.1f} {peak:>9.2f}")
        print("JSON", json.dumps({"kind": "train", "framework": "torch", "mode": mode, "batch": n, "size": s,
                                  "ms_per_step_median": ms, "images_per_s": ips, "peak_gib": peak,
                                  "torch": torch.__version__, "cudnn": torch.backends.cudnn.version(),
                                  "device": torch.cuda.get_device_name()}))
        del model, opt, x, t, fwd
        torch.cuda.empty_cache()


class TopazUNetSmall(torch.nn.Module):
    """Topaz 0.3.20's UDenoiseNetSmall(nf=48, width=11, top_width=5) (= python/models.py's topaz-unet-small), written
    out here because the topaz package (52 MB with its weights) is not on the GPU machine; same layers, names and
    forward (checked against topaz's class by `torch_bench.py topaz-check`)."""

    def __init__(self, nf: int = 48, width: int = 11, top_width: int = 5):
        super().__init__()
        nn = torch.nn
        act = lambda: nn.LeakyReLU(0.1)  # noqa: E731
        self.enc1 = nn.Sequential(nn.Conv2d(1, nf, width, padding=width // 2), act(), nn.MaxPool2d(2))
        self.enc2 = nn.Sequential(nn.Conv2d(nf, nf, 3, padding=1), act(), nn.MaxPool2d(2))
        self.enc3 = nn.Sequential(nn.Conv2d(nf, nf, 3, padding=1), act(), nn.MaxPool2d(2))
        self.enc4 = nn.Sequential(nn.Conv2d(nf, nf, 3, padding=1), act())
        self.dec3 = nn.Sequential(nn.Conv2d(2 * nf, 2 * nf, 3, padding=1), act(),
                                  nn.Conv2d(2 * nf, 2 * nf, 3, padding=1), act())
        self.dec2 = nn.Sequential(nn.Conv2d(3 * nf, 2 * nf, 3, padding=1), act(),
                                  nn.Conv2d(2 * nf, 2 * nf, 3, padding=1), act())
        p = top_width // 2
        self.dec1 = nn.Sequential(nn.Conv2d(2 * nf + 1, 64, top_width, padding=p), act(),
                                  nn.Conv2d(64, 32, top_width, padding=p), act(),
                                  nn.Conv2d(32, 1, top_width, padding=p))

    def forward(self, x):
        p1 = self.enc1(x)
        p2 = self.enc2(p1)
        p3 = self.enc3(p2)
        h = self.enc4(p3)
        h = torch.cat([F.interpolate(h, size=p2.shape[2:], mode="nearest"), p2], 1)
        h = self.dec3(h)
        h = torch.cat([F.interpolate(h, size=p1.shape[2:], mode="nearest"), p1], 1)
        h = self.dec2(h)
        h = torch.cat([F.interpolate(h, size=x.shape[2:], mode="nearest"), x], 1)
        return self.dec1(h)


def topaz_check(args) -> None:
    """TopazUNetSmall == topaz's UDenoiseNetSmall (state-dict names and shapes, and the output on shared weights);
    needs the topaz package (run where it is installed, e.g. on the CPU with the repository's .venv)."""
    from models import topaz_unet_small

    torch.manual_seed(0)
    theirs, ours = topaz_unet_small().double(), TopazUNetSmall().double()
    a, b = theirs.state_dict(), ours.state_dict()
    assert [(k, v.shape) for k, v in a.items()] == [(k, v.shape) for k, v in b.items()], "layers differ"
    ours.load_state_dict(a)
    x = torch.rand(2, 1, 48, 40, dtype=torch.float64)
    d = (theirs(x) - ours(x)).abs().max().item()
    print(f"TopazUNetSmall vs topaz UDenoiseNetSmall: {len(a)} tensors, same names and shapes; max |output diff| {d:.1e}")
    assert d == 0.0


def parity(args) -> None:
    """PyTorch's own deviation from an f64 reference per mode (output, loss, whole gradient, worst tensor): what the
    tolerances of tests/model.rs can be compared with."""
    # (model, n, h, w, seed); topaz-unet-small at the shape of tests/model.rs, several seeds: is DESIGN's 1e-3 tf32
    # bound above what TF32 itself gives for its 11x11 and 5x5 convs over up to 97 channels?
    configs = [((8, 16, 32), 2, 32, 40, 1), (WIDTHS, 1, 64, 64, 1)]
    configs += [("topaz-unet-small", 1, 48, 40, seed) for seed in (1, 2, 3, 4)]
    make = lambda widths: TopazUNetSmall() if widths == "topaz-unet-small" else UNet(widths)  # noqa: E731
    for widths, n, h, w, seed in configs:
        torch.manual_seed(seed)
        ref = make(widths).cuda().double()
        x = torch.rand(n, 1, h, w, device="cuda", dtype=torch.float64) - 0.5
        t = x + 0.2 * (torch.rand_like(x) - 0.5)

        def run(model, mode):
            set_mode(mode)
            model.zero_grad(set_to_none=True)
            xx = x.to(next(model.parameters()).dtype)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=mode == "bf16"):
                y = model(xx)
            loss = F.mse_loss(y.double(), t)
            loss.backward()
            return y.double().detach(), loss.item(), {k: p.grad.double() for k, p in model.named_parameters()}

        y0, l0, g0 = run(ref, "fp32")
        for mode in ["fp32", "tf32", "bf16"]:
            m = make(widths).cuda()
            m.load_state_dict({k: v.float() for k, v in ref.state_dict().items()})
            y, l, g = run(m, mode)
            rel = lambda a, b: ((a - b).norm() / b.norm()).item()
            flat = lambda d: torch.cat([d[k].flatten() for k in g0])
            worst = max((rel(g[k], g0[k]), k) for k in g0)
            name = widths if isinstance(widths, str) else list(widths)
            row = {"kind": "parity", "framework": "torch", "model": name, "seed": seed, "shape": [n, h, w], "mode": mode,
                   "output": rel(y, y0), "loss": abs(l - l0) / l0, "grads": rel(flat(g), flat(g0)),
                   "worst_tensor": worst[1], "worst_tensor_err": worst[0]}
            print(f"torch {name} seed {seed} {n}x{h}x{w} {mode}: output {row['output']:.2e}, loss {row['loss']:.2e}, "
                  f"grads {row['grads']:.2e} (worst {worst[1]} {worst[0]:.2e})")
            print("JSON", json.dumps(row))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["ops", "train", "parity", "topaz-check"])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--modes", default=None)
    args = ap.parse_args()
    if args.modes is None:
        args.modes = "fp32,tf32,bf16,bf16-compile" if args.what == "train" else "fp32,tf32,bf16"
    if args.what == "topaz-check":
        return topaz_check(args)
    print(f"# torch {torch.__version__}, cuDNN {torch.backends.cudnn.version()}, {torch.cuda.get_device_name()}")
    {"ops": ops, "train": train, "parity": parity}[args.what](args)


if __name__ == "__main__":
    main()
