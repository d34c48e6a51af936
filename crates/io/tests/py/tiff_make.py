"""Write multi-page TIFF movies with Pillow and tifffile (the tools cryo-EM TIFF movies come from) for
crates/io/tests/tiff_python.rs: every sample type x compression; prints one JSON list with the expected frames."""
import json, sys

import numpy as np
import tifffile
from PIL import Image

d = sys.argv[1]
out = []
ny, nx, n = 5, 7, 3
for dt, lo, hi in [(np.uint8, 0, 255), (np.uint16, 0, 65535), (np.float32, -1000, 1000)]:
    rng = np.random.default_rng(42)
    if dt == np.float32:
        frames = (rng.standard_normal((n, ny, nx)) * 100).astype(dt)
    else:
        frames = rng.integers(lo, hi, size=(n, ny, nx), endpoint=True).astype(dt)
    name = np.dtype(dt).name
    for comp in [None, "tiff_lzw", "tiff_adobe_deflate"]:
        p = "%s/pil_%s_%s.tif" % (d, name, comp)
        imgs = [Image.fromarray(f) for f in frames]
        imgs[0].save(p, save_all=True, append_images=imgs[1:], compression=comp)
        out.append(dict(path=p, writer="pillow", nx=nx, ny=ny, n=n, frames=frames.astype(np.float64).ravel().tolist()))
    for comp in [None, "zlib"]:
        p = "%s/tifffile_%s_%s.tif" % (d, name, comp)
        tifffile.imwrite(p, frames, compression=comp, photometric="minisblack")
        out.append(dict(path=p, writer="tifffile", nx=nx, ny=ny, n=n, frames=frames.astype(np.float64).ravel().tolist()))
print(json.dumps(out))
