//! notebooks/explore_run.ipynb stays executable: a tiny `cryoden demo` run (4 micrographs of 256², 1 epoch of a
//! unet[4,8]; about a second), then every cell of the notebook executed headless in a Jupyter kernel of
//! `$CRYODEN_PYTHON` (nbclient + ipykernel, from python/requirements.txt) against that run. Fails, never skips,
//! when Python or a package is missing.

mod common;

use std::path::Path;

/// Executes the notebook given as argv[1] in a `python3` kernel (the interpreter running this script); prints a
/// JSON summary on stdout. A cell that raises stops it with the traceback (exit 1).
const RUNNER: &str = r#"
import json, sys
try:
    import ipykernel, matplotlib, mrcfile, nbclient, nbformat, numpy, safetensors
except ImportError as e:
    sys.exit(f"the notebook test needs {e.name}: install python/requirements.txt (scripts/setup-python.sh)")
nb = nbformat.read(sys.argv[1], as_version=4)
client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3", allow_errors=False)
client.execute()
outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
print(json.dumps({
    "code_cells": sum(c.cell_type == "code" for c in nb.cells),
    "executed": sum(c.cell_type == "code" and c.get("execution_count") is not None for c in nb.cells),
    "images": sum("image/png" in o.get("data", {}) for o in outputs),
    "errors": sum(o.get("output_type") == "error" for o in outputs),
    "text": "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream"),
}))
"#;

#[test]
fn the_notebook_runs_headless_against_a_tiny_demo_run() {
    let python = std::env::var("CRYODEN_PYTHON").expect(
        "CRYODEN_PYTHON is not set: run scripts/test.sh (or scripts/setup-python.sh and set it to .venv/bin/python)",
    );
    let t = tempfile::tempdir().unwrap();
    let demo = t.path().join("demo");
    let (o, _, se) = common::run(&[
        &"demo",
        &"--out",
        &demo,
        &"--micrographs",
        &"4",
        &"--size",
        &"256",
        &"--frames",
        &"2",
        &"--epochs",
        &"1",
        &"--widths",
        &"4,8",
    ]);
    assert!(o.status.success(), "{se}");
    // The demo's headline: a table row per method and the report's path.
    assert!(se.contains("PSNR") && se.contains("model"), "{se}");
    assert!(
        se.contains(&format!(
            "report: {}",
            demo.join("report").join("report.html").display()
        )),
        "{se}"
    );

    let notebook = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../notebooks/explore_run.ipynb");
    let jupyter = t.path().join("jupyter");
    std::fs::create_dir_all(jupyter.join("ipython")).unwrap();
    let out = std::process::Command::new(&python)
        .arg("-c")
        .arg(RUNNER)
        .arg(&notebook)
        .env("CRYODEN_DEMO", &demo)
        // No MPLBACKEND: the kernel's inline backend (headless) is what puts figures into the outputs.
        .env_remove("MPLBACKEND")
        // Keep Jupyter's and IPython's state files out of $HOME.
        .env("JUPYTER_RUNTIME_DIR", jupyter.join("runtime"))
        .env("JUPYTER_DATA_DIR", jupyter.join("data"))
        .env("JUPYTER_CONFIG_DIR", jupyter.join("config"))
        .env("JUPYTER_PLATFORM_DIRS", "1")
        .env("IPYTHONDIR", jupyter.join("ipython"))
        .current_dir(t.path())
        .output()
        .unwrap_or_else(|e| panic!("cannot run CRYODEN_PYTHON={python}: {e}"));
    let (so, se) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "the notebook failed:\n{se}\n{so}");
    let v: serde_json::Value = serde_json::from_str(so.trim()).expect("the runner's JSON summary");
    assert_eq!(v["errors"], 0, "{v}");
    assert_eq!(v["executed"], v["code_cells"], "{v}");
    // Loss curves, filters, panels, spectra + FRC: one figure each.
    assert!(v["images"].as_u64().unwrap() >= 4, "{v}");
    let text = v["text"].as_str().unwrap();
    assert!(text.contains("unet"), "architecture not printed: {text}");
    assert!(
        text.contains("PSNR"),
        "the evaluation's numbers not printed: {text}"
    );
}
