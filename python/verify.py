"""PyTorch side of cryoden's parity check (llm.c's test_gpt2 in spirit): for one architecture at a small size,
PyTorch writes a fixture that cryoden must reproduce.

    python python/verify.py --all OUT_DIR [--device cpu|cuda]       # the three fixtures the Rust test uses
    python python/verify.py --arch unet --widths 8,16,32 --batch 2 --height 32 --width 48 --out F.safetensors
    python python/verify.py --all DIR --device cuda --cryoden target/release/cryoden   # GPU vs PyTorch on GPU

With `--cryoden BIN`, after writing the fixtures it runs `BIN bench parity --device DEVICE --precision P` on each
(cryoden's backend on the same device: the CUDA backend for `--device cuda`) for P in f32, tf32, bf16 and checks
issue 6's tolerances (relative L2 of the output and of all parameter gradients as one vector: f32 1e-5, tf32 1e-3,
bf16 1e-2; the loss relative to the same bounds; the worst single gradient tensor is printed for information).
PyTorch's side is always f32 with TF32 off. Exit status 1 if any fails.

A fixture (safetensors, float32, PyTorch layouts) holds, from weights drawn with PyTorch's default
initialisation under `--seed`:

    param.<name>        the initial weights (state_dict names and layouts)
    input, target       one batch [N, 1, H, W] (the Noise2Noise pair of the first step)
    output              model(input)
    loss                [1], the loss of output against target (mean over all elements)
    grad.<name>         d loss / d param for every parameter
    adam1.<name>        the weights after one torch.optim.Adam step on that gradient
    train.input         [S, N, 1, H, W], train.target: S further batches
    train.loss          [S], the loss at each of S Adam steps on those batches, from the initial weights

Metadata: `arch` (cryoden's architecture JSON), `loss` (mse|l1), `adam` (JSON of lr, beta1, beta2, eps,
weight_decay), `torch`, `device`, `seed`. TF32 is off and the computation is float32 throughout, so the only
differences left against cryoden are the order of floating-point sums.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import subprocess

import torch

try:
    from safetensors.torch import save_file
except ImportError:  # e.g. a GPU machine's torch environment without the safetensors package
    save_file = None

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from models import arch_json, build  # noqa: E402

# The three configurations the Rust test checks: small, fast on CPU, odd sizes for Topaz's floor-pooling path,
# non-square images everywhere so a transposed H/W shows.
CONFIGS = {
    "unet": dict(arch="unet", widths=[8, 16, 32], batch=2, height=32, width=48),
    "topaz-unet": dict(arch="topaz-unet", widths=None, batch=2, height=44, width=52),
    "topaz-unet-small": dict(arch="topaz-unet-small", widths=None, batch=2, height=37, width=45),
}

ADAM = dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0)


def loss_fn(kind: str):
    return {"mse": torch.nn.functional.mse_loss, "l1": torch.nn.functional.l1_loss}[kind]


def batch(gen: torch.Generator, n: int, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A Noise2Noise-like pair: one smooth signal plus two independent noises, so training lowers the loss."""
    signal = torch.randn(n, 1, h // 4 + 1, w // 4 + 1, generator=gen)
    signal = torch.nn.functional.interpolate(signal, size=(h, w), mode="bilinear", align_corners=False)
    a = signal + 0.5 * torch.randn(n, 1, h, w, generator=gen)
    b = signal + 0.5 * torch.randn(n, 1, h, w, generator=gen)
    return a, b


def make_fixture(arch: str, widths, batch_size: int, height: int, width: int, seed: int, steps: int,
                 loss_kind: str, device: str, dtype: torch.dtype = torch.float32) -> tuple[dict, dict]:
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.deterministic = True
    torch.manual_seed(seed)
    arch_desc = json.loads(arch_json(arch, widths))
    model = build(arch_desc).to(device=device, dtype=dtype)
    init = {k: v.detach().clone() for k, v in model.state_dict().items()}
    gen = torch.Generator().manual_seed(seed + 1)
    x, t = batch(gen, batch_size, height, width)
    train = [batch(gen, batch_size, height, width) for _ in range(steps)]
    crit = loss_fn(loss_kind)

    def optimizer(m):
        return torch.optim.Adam(m.parameters(), lr=ADAM["lr"], betas=(ADAM["beta1"], ADAM["beta2"]),
                                eps=ADAM["eps"], weight_decay=ADAM["weight_decay"], foreach=False)

    # Forward, loss, gradients, one Adam step.
    opt = optimizer(model)
    opt.zero_grad()
    y = model(x.to(device=device, dtype=dtype))
    loss = crit(y, t.to(device=device, dtype=dtype))
    loss.backward()
    grads = {k: p.grad.detach().clone() for k, p in model.named_parameters()}
    opt.step()
    after = {k: v.detach().clone() for k, v in model.state_dict().items()}

    # S steps on the training batches, from the initial weights with a fresh optimizer.
    model.load_state_dict(init)
    opt = optimizer(model)
    losses = []
    for xs, ts in train:
        opt.zero_grad()
        ls = crit(model(xs.to(device=device, dtype=dtype)), ts.to(device=device, dtype=dtype))
        ls.backward()
        opt.step()
        losses.append(ls.item())

    out = {"input": x, "target": t, "output": y.detach(), "loss": loss.detach().reshape(1)}
    for k, v in init.items():
        out[f"param.{k}"] = v
    for k, v in grads.items():
        out[f"grad.{k}"] = v
    for k, v in after.items():
        out[f"adam1.{k}"] = v
    out["train.input"] = torch.stack([a for a, _ in train])
    out["train.target"] = torch.stack([b for _, b in train])
    out["train.loss"] = torch.tensor(losses, dtype=torch.float32)
    out = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in out.items()}
    meta = {
        "arch": json.dumps(arch_desc),
        "loss": loss_kind,
        "adam": json.dumps(ADAM),
        "torch": torch.__version__,
        "device": device if device == "cpu" else torch.cuda.get_device_name(),
        "seed": str(seed),
        "dtype": str(dtype).removeprefix("torch."),
    }
    return out, meta


def write_safetensors(tensors: dict, path: str, metadata: dict) -> None:
    """The safetensors format (8-byte little-endian header length, JSON header, raw little-endian data), for
    float32 tensors, when the package is not installed."""
    header = {"__metadata__": metadata}
    blobs, offset = [], 0
    for name in sorted(tensors):
        # torch only (no numpy needed); x86-64 and aarch64 are little-endian like the format.
        b = bytes(tensors[name].to(torch.float32).contiguous().reshape(-1).view(torch.uint8).tolist())
        header[name] = {"dtype": "F32", "shape": list(tensors[name].shape), "data_offsets": [offset, offset + len(b)]}
        blobs.append(b)
        offset += len(b)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(len(h).to_bytes(8, "little"))
        f.write(h)
        for b in blobs:
            f.write(b)


# Issue 6's tolerances for a backend against the f32 reference, per precision (relative L2).
TOLERANCE = {"f32": 1e-5, "tf32": 1e-3, "bf16": 1e-2}


def check_cryoden(binary: str, device: str, paths: list[str]) -> bool:
    """Runs `binary bench parity` on every fixture in each precision; prints a table; True if all pass."""
    ok = True
    precisions = ["f32", "tf32", "bf16"] if device.startswith("cuda") else ["f32"]
    print(f"{'arch':<18} {'precision':<9} {'output rel L2':>14} {'loss rel':>10} {'gradients':>10} "
          f"{'worst tensor':>24} {'rel L2':>9}  result")
    for p in precisions:
        cmd = [binary, "bench", "parity", "--device", device, "--precision", p, "--json", *paths]
        run = subprocess.run(cmd, capture_output=True, text=True)
        if run.returncode != 0:
            print(f"{' '.join(cmd)} failed:\n{run.stderr}", file=sys.stderr)
            return False
        for line in run.stdout.splitlines():
            r = json.loads(line)
            tol = TOLERANCE[p]
            worst = r["grad_worst"]
            good = r["output"]["rel_l2"] <= tol and r["loss_rel"] <= tol and r["grad_all"]["rel_l2"] <= tol
            ok &= good
            name = r["arch"]["name"] if isinstance(r["arch"], dict) and "name" in r["arch"] else str(r["arch"])
            print(f"{name[:18]:<18} {p:<9} {r['output']['rel_l2']:>14.2e} {r['loss_rel']:>10.2e} "
                  f"{r['grad_all']['rel_l2']:>10.2e} {worst['name'][:24]:>24} {worst['rel_l2']:>9.2e}  "
                  f"{'ok' if good else 'FAIL'} (≤ {tol:g}) "
                  f"[{r['backend']} vs torch on {r['torch_device']}]")
    return ok


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--all", metavar="DIR", help="write <arch>.safetensors for the three standard configurations")
    ap.add_argument("--arch", choices=sorted(CONFIGS), help="one architecture (with --out)")
    ap.add_argument("--widths", help="unet widths, comma-separated (default 8,16,32)")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--height", type=int)
    ap.add_argument("--width", type=int)
    ap.add_argument("--out", help="fixture path for --arch")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=10, help="training steps recorded (default 10)")
    ap.add_argument("--loss", choices=["mse", "l1"], default="mse")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (TF32 off either way)")
    ap.add_argument("--f64", action="store_true",
                    help="compute the fixture in float64 (stored as float32): a reference to tell whose f32 error "
                         "a difference is")
    ap.add_argument("--cryoden", metavar="BIN",
                    help="then compare BIN's backend on --device against the fixtures (bench parity)")
    args = ap.parse_args()

    jobs = []
    if args.all:
        os.makedirs(args.all, exist_ok=True)
        for name, c in CONFIGS.items():
            jobs.append((dict(c), os.path.join(args.all, f"{name}.safetensors")))
    elif args.arch and args.out:
        c = dict(CONFIGS[args.arch])
        if args.widths:
            c["widths"] = [int(v) for v in args.widths.split(",")]
        c["batch"] = args.batch
        c["height"] = args.height or c["height"]
        c["width"] = args.width or c["width"]
        jobs.append((c, args.out))
    else:
        ap.error("give --all DIR, or --arch and --out")
    for c, path in jobs:
        tensors, meta = make_fixture(c["arch"], c["widths"], c["batch"], c["height"], c["width"], args.seed,
                                     args.steps, args.loss, args.device,
                                     torch.float64 if args.f64 else torch.float32)
        tmp = path + ".tmp"
        if save_file is not None:
            save_file(tensors, tmp, metadata=meta)
        else:
            write_safetensors(tensors, tmp, meta)
        os.replace(tmp, path)
        print(f"{path}: {c['arch']} {c['batch']}x{c['height']}x{c['width']} loss {tensors['loss'].item():.6f}")
    if args.cryoden:
        if not check_cryoden(args.cryoden, args.device, [p for _, p in jobs]):
            sys.exit(1)


if __name__ == "__main__":
    main()
