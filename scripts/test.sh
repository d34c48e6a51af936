#!/usr/bin/env bash
# The test suite: Rust unit and integration tests, including the cross-checks against the Python
# reference implementations (mrcfile, PyTorch, scikit-image, Topaz) that scripts/setup-python.sh installs, and
# notebooks/explore_run.ipynb executed headless against a tiny demo run (crates/cli/tests/notebook.rs, ~6 s).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-python.sh
export CRYODEN_PYTHON="$PWD/.venv/bin/python"
export CRYODEN_TESTDATA="$PWD/.cache/testdata"
cargo test --workspace --release "$@"
