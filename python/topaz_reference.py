"""Topaz's own answer on a crop of a real micrograph, for the Rust test that checks cryoden's `topaz-unet` against
Topaz (crates/topaz/tests/topaz_parity.rs).

    python topaz_reference.py MICROGRAPH.mrc OUT.safetensors --crop Y0,X0,H,W [--model unet] [--checkpoint CKPT]

Writes (float32, [H, W]):
    input        the crop
    normalised   what Topaz's network sees: denoise_image standardises with numpy's mean/std, then
                 Denoise._denoise standardises again with torch's mean and (unbiased) std
    net_output   Topaz's UDenoiseNet with its pretrained weights (as Topaz's load_model builds it) on `normalised`
    denoised     topaz.denoise.denoise_image(crop, [Denoise(model)], patch_size=-1): what
                 `topaz denoise -m MODEL --patch-size -1` writes (no lowpass, no deconvolution, no --normalize)
    ckpt_output  with --checkpoint: python/models.py's network loaded from that cryoden checkpoint, on `normalised`
"""
import argparse
import os
import sys

import mrcfile
import numpy as np
import torch
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("micrograph")
    ap.add_argument("out")
    ap.add_argument("--crop", required=True, help="Y0,X0,H,W")
    ap.add_argument("--model", default="unet", help="Topaz pretrained model name (unet, unet-small)")
    ap.add_argument("--checkpoint")
    args = ap.parse_args()
    y0, x0, h, w = (int(v) for v in args.crop.split(","))

    # topaz-em is installed --no-deps; h5py is imported by its training datasets only, never used here.
    if "h5py" not in sys.modules:
        try:
            import h5py  # noqa: F401
        except ImportError:
            import types

            stub = types.ModuleType("h5py")
            stub.File = object  # only appears in a type annotation there
            sys.modules["h5py"] = stub
    from topaz.denoise import Denoise, denoise_image
    from topaz.denoising import models as topaz_models

    with mrcfile.open(args.micrograph, permissive=True) as m:
        mic = np.asarray(m.data[y0:y0 + h, x0:x0 + w], dtype=np.float32).copy()
    assert mic.shape == (h, w), f"crop {args.crop} does not fit {args.micrograph}"

    torch.set_grad_enabled(False)
    # topaz.denoising.models.load_model, minus its package-resource lookup (broken in topaz-em 0.3.20 without
    # pkg_resources): the same class, the same hyper-parameters, the state_dict read by torch.load itself.
    name = topaz_models.model_name_dict[args.model]
    model = {"unet_L2_v0.2.2.sav": lambda: topaz_models.UDenoiseNet(base_width=11, top_width=5),
             "unet_small_L1_v0.2.2.sav": lambda: topaz_models.UDenoiseNetSmall(width=11, top_width=5)}[name]()
    path = os.path.join(os.path.dirname(topaz_models.__file__), "..", "pretrained", "denoise", name)
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=False))
    model.eval()
    # Denoise() accepts only a plain nn.Module by exact type; set its four attributes as its __init__ would.
    denoiser = Denoise.__new__(Denoise)
    denoiser.model, denoiser.device, denoiser.dims, denoiser.use_cuda = model, torch.device("cpu"), 2, False
    # The two standardisations of topaz denoise, in Topaz's own dtypes and order.
    mu, std = mic.mean(), mic.std()
    x = torch.from_numpy((mic - mu) / std)
    x = (x - x.mean()) / x.std()
    out = {
        "input": torch.from_numpy(mic),
        "normalised": x,
        "net_output": model(x[None, None])[0, 0],
        "denoised": torch.from_numpy(np.ascontiguousarray(
            denoise_image(mic.copy(), [denoiser], patch_size=-1), dtype=np.float32)),
    }
    if args.checkpoint:
        from models import load_checkpoint

        ours = load_checkpoint(args.checkpoint)
        out["ckpt_output"] = ours(x[None, None])[0, 0]
    save_file({k: v.float().contiguous() for k, v in out.items()}, args.out,
              metadata={"model": args.model, "torch": torch.__version__})


if __name__ == "__main__":
    main()
