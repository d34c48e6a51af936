#!/usr/bin/env bash
# Builds what scripts/gpu/run.sh needs on the GPU machine (no Rust toolchain, no network there) into a carry
# directory (default .gpucarry/h3, ignored by git): the stripped `cryoden` built here with --features cuda, and a
# minimal `topaz` package for PyTorch's side of the Topaz comparisons: Topaz 0.3.20's own denoising/models.py
# (GPLv3; copied from the local venv, never committed) with stubs for the two imports UDenoiseNet does not use
# (topaz.filters, topaz.model.utils pull in PIL and the data loaders).
#
#   CARGO_TARGET_DIR=targets/gpucli cargo build --release -p cryoden --features cuda
#   bash scripts/gpu/prepare_carry.sh [CARRY_DIR]
set -euo pipefail
cd "$(dirname "$0")/../.."
carry=${1:-.gpucarry/h3}
target=${CARGO_TARGET_DIR:-targets/gpucli}
venv_py=${CRYODEN_PYTHON:-.venv/bin/python}
mkdir -p "$carry"
strip -o "$carry/cryoden" "$target/release/cryoden"
topaz_src=$("$venv_py" -c 'import topaz, os; print(os.path.dirname(topaz.__file__))')
pkg="$carry/pylib/topaz"
rm -rf "$carry/pylib"
mkdir -p "$pkg/denoising" "$pkg/model"
cp "$topaz_src/denoising/models.py" "$pkg/denoising/models.py"
: > "$pkg/__init__.py"
: > "$pkg/denoising/__init__.py"
: > "$pkg/model/__init__.py"
cat > "$pkg/filters.py" <<'PY'
class AffineDenoise:  # stub: not used by UDenoiseNet / UDenoiseNetSmall
    pass
PY
cat > "$pkg/model/utils.py" <<'PY'
def load_state_dict_from_pkg(*args, **kwargs):  # stub: pretrained loading is not used by the benchmarks
    raise NotImplementedError("stub topaz package (scripts/gpu/prepare_carry.sh)")
PY
du -sh "$carry"
