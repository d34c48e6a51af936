"""Relative L2 (and max abs difference) of denoised MRC outputs against a reference directory of the same names:
    python scripts/gpu/compare_mrc.py REF_DIR OTHER_DIR...
Prints one JSON line per other directory (mean and worst over files). torch only (no numpy, no mrcfile), mode 2."""
import json
import os
import struct
import sys

import torch


def read_mrc(path):
    with open(path, "rb") as f:
        b = f.read()
    nx, ny, nz, mode = struct.unpack("<4i", b[:16])
    nsymbt = struct.unpack("<i", b[92:96])[0]
    if mode != 2:
        raise SystemExit(f"{path}: mode {mode}, expected 2 (float32)")
    off = 1024 + nsymbt
    return torch.frombuffer(bytearray(b[off:off + 4 * nx * ny * nz]), dtype=torch.float32).double()


def main():
    ref, others = sys.argv[1], sys.argv[2:]
    names = sorted(os.listdir(ref))
    for o in others:
        rels, maxes = [], []
        for n in names:
            a, r = read_mrc(os.path.join(o, n)), read_mrc(os.path.join(ref, n))
            rels.append(float((a - r).norm() / r.norm()))
            maxes.append(float((a - r).abs().max() / r.abs().max()))
        print(json.dumps({"name": "accuracy", "reference": ref, "other": o, "files": len(names),
                          "rel_l2_mean": sum(rels) / len(rels), "rel_l2_max": max(rels),
                          "max_abs_over_max_ref": max(maxes)}))


if __name__ == "__main__":
    main()
