//! TIFF movies written by Pillow and tifffile (through $CRYODEN_PYTHON, tests/py/tiff_make.py) read here frame
//! for frame: uint8 / uint16 / float32, uncompressed, LZW and deflate. Fails, never skips, without CRYODEN_PYTHON.

use cryoden_io::{open_frames, FrameStack, ReadOptions, TiffStack};
use serde_json::Value;
use std::process::Command;

#[test]
fn tiffs_from_pillow_and_tifffile_read_identically() {
    let python = std::env::var("CRYODEN_PYTHON")
        .expect("CRYODEN_PYTHON is not set: run scripts/test.sh, or set it to .venv/bin/python (scripts/setup-python.sh)");
    let dir = tempfile::tempdir().unwrap();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py/tiff_make.py");
    let out = Command::new(python)
        .arg(script)
        .arg(dir.path())
        .output()
        .expect("cannot run $CRYODEN_PYTHON");
    assert!(
        out.status.success(),
        "tiff_make.py failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let files: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        files.len(),
        3 * 5,
        "3 sample types x (3 Pillow + 2 tifffile compressions)"
    );
    for f in &files {
        let p = f["path"].as_str().unwrap();
        let (nx, ny, n) = (
            f["nx"].as_u64().unwrap() as usize,
            f["ny"].as_u64().unwrap() as usize,
            f["n"].as_u64().unwrap() as usize,
        );
        let want: Vec<f32> = f["frames"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        let s = TiffStack::open(p).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((s.n_frames(), s.frame_dims()), (n, (nx, ny)), "{p}");
        for i in (0..n).rev() {
            assert_eq!(
                s.read_frame(i).unwrap(),
                want[i * nx * ny..(i + 1) * nx * ny].to_vec(),
                "{p} frame {i}"
            );
        }
        // The same through the format-agnostic entry point.
        let fs = open_frames(p, ReadOptions::strict()).unwrap();
        assert_eq!(
            fs.read_frame(1).unwrap(),
            want[nx * ny..2 * nx * ny].to_vec(),
            "{p}"
        );
    }
}
