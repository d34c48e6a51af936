//! Cross-checks against mrcfile 1.5.4, the reference implementation of MRC-2014 (through $CRYODEN_PYTHON running
//! tests/py/mrcfile_check.py), and against mrcfile's real-world test files under $CRYODEN_TESTDATA/mrcfile.
//! Both variables are required: these tests fail, never skip, without them (scripts/test.sh sets them).

use cryoden_io::{read, validate, write, ByteOrder, Mode, MrcStack, WriteOptions};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

fn python() -> String {
    std::env::var("CRYODEN_PYTHON").expect(
        "CRYODEN_PYTHON is not set: run scripts/test.sh, or set it to a Python with mrcfile 1.5.4 \
         (scripts/setup-python.sh creates .venv)",
    )
}

fn testdata() -> PathBuf {
    let d = std::env::var("CRYODEN_TESTDATA").expect(
        "CRYODEN_TESTDATA is not set: run scripts/test.sh, or scripts/setup-python.sh and set it to .cache/testdata",
    );
    let p = PathBuf::from(d).join("mrcfile");
    assert!(
        p.join("EMD-3001.map").exists(),
        "{} lacks mrcfile's test files; run scripts/setup-python.sh",
        p.display()
    );
    p
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py/mrcfile_check.py")
}

/// Run the Python side; return its stdout lines parsed as JSON.
fn py(args: &[&str]) -> Vec<Value> {
    let out = Command::new(python())
        .arg(script())
        .args(args)
        .output()
        .expect("cannot run $CRYODEN_PYTHON");
    assert!(
        out.status.success(),
        "mrcfile_check.py {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}
fn f32s(v: &Value) -> Vec<f32> {
    v.as_array().unwrap().iter().map(|x| f(x) as f32).collect()
}
fn i(v: &Value) -> i64 {
    v.as_i64().unwrap()
}

/// |a - b| <= rel * max(|a|, |b|) + abs.
fn close(a: f64, b: f64, rel: f64, abs: f64) -> bool {
    (a - b).abs() <= rel * a.abs().max(b.abs()) + abs
}

#[test]
fn files_we_write_open_in_mrcfile_identically_and_validate() {
    let dir = tempfile::tempdir().unwrap();
    let mut paths = Vec::new();
    let mut expect = Vec::new();
    let (nx, ny) = (9usize, 6usize);
    for mode in [
        Mode::Int8,
        Mode::Int16,
        Mode::Float32,
        Mode::Uint16,
        Mode::Float16,
    ] {
        for order in [ByteOrder::Little, ByteOrder::Big] {
            for (kind, nz, ispg) in [("image", 1, 0), ("stack", 3, 0), ("volume", 4, 1)] {
                let n = nx * ny * nz;
                let data: Vec<f32> = (0..n)
                    .map(|k| {
                        let v = ((k * 37) % 251) as f32
                            - if mode == Mode::Uint16 { 0.0 } else { 125.0 };
                        if matches!(mode, Mode::Float32 | Mode::Float16) {
                            v * 0.5
                        } else {
                            v
                        }
                    })
                    .collect();
                let p = dir.path().join(format!(
                    "ours_m{}_{}_{kind}.mrc",
                    mode.number(),
                    order.as_str()
                ));
                let opts = WriteOptions {
                    mode,
                    byte_order: order,
                    voxel_size: [0.8537755, 0.8537755, 1.25],
                    ispg,
                    origin: [1.0, -2.0, 3.5],
                    ..WriteOptions::default()
                };
                write(&p, &data, [nx, ny, nz], &opts).unwrap();
                paths.push(p.display().to_string());
                expect.push((data, mode, order, nz, opts.voxel_size));
            }
        }
    }
    let mut args = vec!["describe"];
    args.extend(paths.iter().map(|s| s.as_str()));
    let got = py(&args);
    assert_eq!(got.len(), expect.len());
    for (g, (data, mode, order, nz, vs)) in got.iter().zip(&expect) {
        let p = g["path"].as_str().unwrap();
        let log = g["validate_log"].as_str().unwrap();
        if *mode == Mode::Float16 {
            // mrcfile computes the std of float16 data in float16, which overflows to inf (its own files then
            // store rms = inf). That is the only complaint allowed; our rms is checked against numpy's f64 std.
            let allowed = log.is_empty()
                || log.lines().all(|l| {
                    l.starts_with("Data statistics appear to be inaccurate: RMS deviation is inf")
                });
            assert!(allowed, "{p}: mrcfile.validate failed:\n{log}");
            let h = read(p).unwrap().header;
            assert!(
                close(h.rms as f64, f(&g["data_std"]), 1e-6, 0.0),
                "{p}: rms {} vs {}",
                h.rms,
                g["data_std"]
            );
        } else {
            assert!(
                g["valid"].as_bool().unwrap(),
                "{p}: mrcfile.validate failed:\n{log}"
            );
        }
        assert_eq!(f32s(&g["data"]), *data, "{p}: data differ");
        assert_eq!(i(&g["mode"]), mode.number() as i64, "{p}");
        assert_eq!(g["byte_order"], order.as_str(), "{p}");
        assert_eq!(
            (i(&g["nx"]), i(&g["ny"]), i(&g["nz"])),
            (9, 6, *nz as i64),
            "{p}"
        );
        // Voxel size: mrcfile's value equals ours bit for bit, and the requested one to f32 rounding of cella.
        let ours = read(p).unwrap().voxel_size();
        assert_eq!(f32s(&g["voxel_size"]), ours.to_vec(), "{p}");
        for k in 0..3 {
            assert!(
                close(ours[k] as f64, vs[k] as f64, 1e-6, 0.0),
                "{p}: voxel size {ours:?} vs {vs:?}"
            );
        }
        assert_eq!(f32s(&g["origin"]), vec![1.0, -2.0, 3.5], "{p}");
    }
}

#[test]
fn files_mrcfile_writes_read_here_identically() {
    let dir = tempfile::tempdir().unwrap();
    let made = py(&["make", dir.path().to_str().unwrap()]);
    let files = made[0].as_array().unwrap();
    assert_eq!(files.len(), 5 * 2 * 3, "every mode x byte order x shape");
    let mut paths: Vec<&str> = vec!["describe"];
    paths.extend(files.iter().map(|x| x["path"].as_str().unwrap()));
    let described = py(&paths);
    for (m, d) in files.iter().zip(&described) {
        let p = m["path"].as_str().unwrap();
        let ours = read(p).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(ours.data, f32s(&m["data"]), "{p}: data differ");
        // (mrcfile writes int8 data with the native header byte order whatever was asked: compare with the file's.)
        assert_eq!(
            ours.byte_order.as_str(),
            d["byte_order"].as_str().unwrap(),
            "{p}"
        );
        if i(&m["mode"]) != 0 {
            assert_eq!(
                ours.byte_order.as_str(),
                m["order"].as_str().unwrap(),
                "{p}"
            );
        }
        assert_eq!(ours.header.mode as i64, i(&m["mode"]), "{p}");
        let shape: Vec<i64> = m["shape"].as_array().unwrap().iter().map(i).collect();
        let nz = if shape.len() == 3 { shape[0] } else { 1 };
        assert_eq!(
            (ours.nx() as i64, ours.ny() as i64, ours.nz() as i64),
            (shape[shape.len() - 1], shape[shape.len() - 2], nz)
        );
        assert_eq!(ours.voxel_size().to_vec(), f32s(&d["voxel_size"]), "{p}");
        assert_eq!(ours.header.ispg as i64, i(&d["ispg"]), "{p}");
        assert!(ours.warnings.is_empty(), "{p}: {:?}", ours.warnings);
        // mrcfile's own files validate here too, except that mrcfile leaves statistics to the caller
        // (set_data updates them, so they should match).
        assert_eq!(validate(p).unwrap(), vec![], "{p}");
        // Random access to the last image of the stack agrees with the whole read.
        let s = MrcStack::open(p).unwrap();
        let plane = s.nx() * s.ny();
        assert_eq!(
            s.read_image(s.nz() - 1).unwrap(),
            ours.data[(s.nz() - 1) * plane..].to_vec(),
            "{p}"
        );
    }
}

/// Header values and data statistics of the real-world files equal mrcfile's.
#[test]
fn real_files_match_mrcfile() {
    let td = testdata();
    let dir = tempfile::tempdir().unwrap();
    // mrcfile ships .gz variants of the EMDB maps only; gzip the micrographs here so every file has one.
    let mut files: Vec<PathBuf> = [
        "epu2.9_example.mrc",
        "fei-extended.mrc",
        "EMD-3001.map",
        "EMD-3197.map",
        "emd_3001.map.gz",
        "emd_3197.map.gz",
    ]
    .iter()
    .map(|n| td.join(n))
    .collect();
    for n in ["epu2.9_example.mrc", "fei-extended.mrc"] {
        use std::io::Write;
        let gz = dir.path().join(format!("{n}.gz"));
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(&std::fs::read(td.join(n)).unwrap()).unwrap();
        std::fs::write(&gz, enc.finish().unwrap()).unwrap();
        files.push(gz);
    }
    let strs: Vec<String> = files.iter().map(|p| p.display().to_string()).collect();
    let mut args = vec!["describe"];
    args.extend(strs.iter().map(|s| s.as_str()));
    let got = py(&args);
    for (g, p) in got.iter().zip(&files) {
        let s = MrcStack::open(p).unwrap_or_else(|e| panic!("{e}"));
        let h = s.header();
        let name = p.display();
        assert_eq!(
            [h.nx, h.ny, h.nz, h.mode, h.ispg, h.nsymbt, h.nversion, h.nlabl]
                .map(|v| v as i64)
                .to_vec(),
            ["nx", "ny", "nz", "mode", "ispg", "nsymbt", "nversion", "nlabl"]
                .map(|k| i(&g[k]))
                .to_vec(),
            "{name}"
        );
        assert_eq!(
            vec![h.mapc as i64, h.mapr as i64, h.maps as i64],
            g["axes"]
                .as_array()
                .unwrap()
                .iter()
                .map(i)
                .collect::<Vec<_>>(),
            "{name}: axis order"
        );
        assert_eq!(
            vec![h.mx as i64, h.my as i64, h.mz as i64],
            g["mxyz"]
                .as_array()
                .unwrap()
                .iter()
                .map(i)
                .collect::<Vec<_>>(),
            "{name}"
        );
        assert_eq!(
            vec![h.nxstart as i64, h.nystart as i64, h.nzstart as i64],
            g["nxstart"]
                .as_array()
                .unwrap()
                .iter()
                .map(i)
                .collect::<Vec<_>>(),
            "{name}"
        );
        assert_eq!(h.cella.to_vec(), f32s(&g["cella"]), "{name}");
        assert_eq!(h.cellb.to_vec(), f32s(&g["cellb"]), "{name}");
        assert_eq!(h.origin.to_vec(), f32s(&g["origin"]), "{name}");
        assert_eq!(s.voxel_size().to_vec(), f32s(&g["voxel_size"]), "{name}");
        assert_eq!(
            [h.dmin, h.dmax, h.dmean, h.rms].to_vec(),
            f32s(&serde_json::json!([
                g["dmin"], g["dmax"], g["dmean"], g["rms"]
            ])),
            "{name}"
        );
        assert_eq!(
            h.exttyp.to_vec(),
            g["exttyp"]
                .as_str()
                .unwrap()
                .chars()
                .map(|c| c as u8)
                .collect::<Vec<_>>(),
            "{name}"
        );
        assert_eq!(
            h.machst.to_vec(),
            g["machst"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| i(v) as u8)
                .collect::<Vec<_>>(),
            "{name}"
        );
        assert_eq!(
            s.byte_order().as_str(),
            g["byte_order"].as_str().unwrap(),
            "{name}"
        );
        // Data statistics: min/max exact; mean and std to 1e-9 relative (both sum in f64, in different orders).
        let st = s.data_stats().unwrap();
        assert_eq!(
            (st.min, st.max),
            (f(&g["data_min"]), f(&g["data_max"])),
            "{name}"
        );
        assert!(
            close(st.mean, f(&g["data_mean"]), 1e-9, 1e-12),
            "{name}: mean {} vs {}",
            st.mean,
            g["data_mean"]
        );
        assert!(
            close(st.std(), f(&g["data_std"]), 1e-9, 1e-12),
            "{name}: std {} vs {}",
            st.std(),
            g["data_std"]
        );
        if let Value::Array(d) = &g["data"] {
            let ours = s.read_all().unwrap();
            assert_eq!(
                ours,
                d.iter().map(|x| f(x) as f32).collect::<Vec<_>>(),
                "{name}: data differ"
            );
        }
        // Validity agrees with mrcfile's verdict.
        assert_eq!(
            validate(p).unwrap().is_empty(),
            g["valid"].as_bool().unwrap(),
            "{name}: {:?} vs\n{}",
            validate(p).unwrap(),
            g["validate_log"]
        );
        // FEI metadata: dose (e/Å²) and pixel size (Å) from the extended header, as mrcfile decodes them (SI units).
        if let Some(fei) = g.get("fei") {
            let ours = s.fei_sections().expect("FEI sections decode");
            assert_eq!(ours[0].metadata_size as i64, i(&fei["size"]));
            assert!(close(
                ours[0].dose_e_per_a2,
                f(&fei["dose"]) * 1e-20,
                1e-12,
                0.0
            ));
            assert!(close(
                ours[0].pixel_size_a[0],
                f(&fei["pixel_size"]) * 1e10,
                1e-12,
                0.0
            ));
            assert!(close(ours[0].ht_volts, f(&fei["ht"]), 1e-12, 0.0));
        }
    }
    // The values users look for, pinned: a 4096² Falcon micrograph at 0.6666 Å/px with ~41 e/Å².
    let epu = MrcStack::open(td.join("epu2.9_example.mrc")).unwrap();
    let fei = &epu.fei_sections().unwrap()[0];
    assert!(
        (fei.dose_e_per_a2 - 41.17).abs() < 0.01 && (fei.pixel_size_a[0] - 0.6666).abs() < 1e-4
    );
}
