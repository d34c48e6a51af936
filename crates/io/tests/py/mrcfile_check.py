"""mrcfile 1.5.4 side of the cross-checks in crates/io/tests/mrcfile.rs (run by $CRYODEN_PYTHON).

  describe FILE...      one JSON object per file: header fields, data statistics, mrcfile.validate, data values
                        (only for small files), FEI metadata of the first section
  make DIR              write files in every mode, byte order and shape with mrcfile; print their expected data
"""
import contextlib, io, json, sys, warnings

import mrcfile
import numpy as np


def describe(path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a strict open must not need warnings
        m = mrcfile.open(path, permissive=False)
    with m:
        h = m.header
        d = m.data
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            valid = bool(m.validate())
        out = dict(
            path=path,
            nx=int(h.nx), ny=int(h.ny), nz=int(h.nz), mode=int(h.mode),
            nxstart=[int(h.nxstart), int(h.nystart), int(h.nzstart)],
            mxyz=[int(h.mx), int(h.my), int(h.mz)],
            cella=[float(h.cella.x), float(h.cella.y), float(h.cella.z)],
            cellb=[float(h.cellb.alpha), float(h.cellb.beta), float(h.cellb.gamma)],
            axes=[int(h.mapc), int(h.mapr), int(h.maps)],
            dmin=float(h.dmin), dmax=float(h.dmax), dmean=float(h.dmean), rms=float(h.rms),
            ispg=int(h.ispg), nsymbt=int(h.nsymbt), exttyp=bytes(h.exttyp).decode("latin-1"),
            nversion=int(h.nversion),
            origin=[float(h.origin.x), float(h.origin.y), float(h.origin.z)],
            machst=[int(b) for b in h.machst],
            byte_order="big" if h.mode.dtype.byteorder == ">" else "little",
            voxel_size=[float(m.voxel_size.x), float(m.voxel_size.y), float(m.voxel_size.z)],
            nlabl=int(h.nlabl),
            data_min=float(d.min()), data_max=float(d.max()),
            data_mean=float(d.mean(dtype=np.float64)), data_std=float(d.std(dtype=np.float64)),
            valid=valid, validate_log=buf.getvalue(),
            data=d.astype(np.float64).ravel().tolist() if d.size <= 100000 else None,
        )
        if bytes(h.exttyp) in (b"FEI1", b"FEI2"):
            e = m.indexed_extended_header[0]
            out["fei"] = dict(dose=float(e["Dose"]), pixel_size=float(e["Pixel size X"]),
                              ht=float(e["HT"]), size=int(e["Metadata size"]))
        return out


def make(dirname):
    # Deterministic data that every mode holds exactly: small integers (and halves for the float modes).
    files = []
    for mode, dtype in [(0, "i1"), (1, "i2"), (2, "f4"), (6, "u2"), (12, "f2")]:
        for order in ["<", ">"]:
            for shape, kind in [((6, 9), "image"), ((3, 6, 9), "stack"), ((4, 6, 9), "volume")]:
                n = int(np.prod(shape))
                base = (np.arange(n) * 37 % 251) - (0 if mode == 6 else 125)
                if mode in (2, 12):
                    base = base * 0.5
                arr = base.reshape(shape).astype(order + dtype)
                name = "%s/mf_m%d_%s_%s.mrc" % (dirname, mode, "big" if order == ">" else "little", kind)
                with mrcfile.new(name, overwrite=True) as m:
                    m.set_data(arr)
                    if kind == "volume":
                        m.set_volume()
                    m.voxel_size = (1.5, 2.0, 2.5)
                    m.header.origin = (1.0, 2.0, 3.0)
                files.append(dict(path=name, mode=mode, order="big" if order == ">" else "little", kind=kind,
                                  shape=list(shape), data=arr.astype(np.float64).ravel().tolist()))
    return files


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "describe":
        for p in sys.argv[2:]:
            print(json.dumps(describe(p)))
    elif cmd == "make":
        print(json.dumps(make(sys.argv[2])))
    else:
        sys.exit("unknown command " + cmd)
