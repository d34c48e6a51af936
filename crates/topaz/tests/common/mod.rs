//! Helpers shared by the integration tests: the Python reference (`$CRYODEN_PYTHON`) and Topaz's files.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// The Python interpreter of the reference venv. Missing → the test fails and says how to set it.
pub fn python() -> PathBuf {
    match std::env::var_os("CRYODEN_PYTHON") {
        Some(p) => PathBuf::from(p),
        None => panic!(
            "CRYODEN_PYTHON is not set: run scripts/test.sh, or set it to the python of the venv made by \
             scripts/setup-python.sh (e.g. CRYODEN_PYTHON=$PWD/.venv/bin/python)"
        ),
    }
}

/// The repository's `python/` folder.
pub fn python_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../python")
}

/// Runs `$CRYODEN_PYTHON args…` and returns its stdout; panics with stderr on failure.
pub fn run_python(args: &[&str]) -> String {
    let out = Command::new(python())
        .args(args)
        .env("PYTHONPATH", python_dir())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", python().display()));
    assert!(
        out.status.success(),
        "python {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Topaz's pretrained denoising models, from the installed topaz package (never committed here).
pub fn pretrained_dir() -> PathBuf {
    let out = run_python(&[
        "-c",
        "import topaz, os; print(os.path.dirname(topaz.__file__))",
    ]);
    let dir = Path::new(out.trim()).join("pretrained/denoise");
    assert!(
        dir.is_dir(),
        "{} is missing: is topaz-em 0.3.20 installed in the venv?",
        dir.display()
    );
    dir
}

/// Named tensors `(name, shape, f32 values)` in state_dict order.
pub type Tensors = Vec<(String, Vec<usize>, Vec<f32>)>;

/// Reads a safetensors file into tensors in the order stored in its "order" metadata, and its metadata.
pub fn read_dump(path: &Path) -> (Tensors, std::collections::HashMap<String, String>) {
    let bytes = std::fs::read(path).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let meta = meta.metadata().clone().unwrap_or_default();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let order: Vec<String> = match meta.get("order") {
        Some(o) => serde_json::from_str(o).unwrap(),
        None => {
            let mut n: Vec<String> = st.names().into_iter().map(str::to_string).collect();
            n.sort();
            n
        }
    };
    let tensors = order
        .into_iter()
        .map(|name| {
            let t = st.tensor(&name).unwrap();
            assert_eq!(t.dtype(), safetensors::Dtype::F32, "{name}");
            let v = t
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            (name, t.shape().to_vec(), v)
        })
        .collect();
    (tensors, meta)
}
