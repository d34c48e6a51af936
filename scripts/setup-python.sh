#!/usr/bin/env bash
# Creates .venv with the Python reference implementations the tests compare against (mrcfile, PyTorch,
# scikit-image, Topaz) and fetches real-world test files into .cache/testdata. Idempotent: re-runs only
# when python/requirements.txt changes.
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}
stamp=.venv/.requirements.sha256
want=$(sha256sum python/requirements.txt scripts/setup-python.sh | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "setup-python: creating .venv (mrcfile, numpy, torch, scikit-image, topaz-em; matplotlib, nbclient, ipykernel for the notebook) ..." >&2
  "$py" -m venv .venv
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -r python/requirements.txt
  # Topaz-Denoise for parity tests; --no-deps keeps its pinned old numpy/torch away from our venv.
  .venv/bin/pip install -q --no-deps topaz-em==0.3.20
  echo "$want" > "$stamp"
fi
# Real-world MRC files from mrcfile's source distribution (BSD-3), fetched at test time, never committed.
data=.cache/testdata/mrcfile
if [ ! -f "$data/.complete" ]; then
  echo "setup-python: fetching mrcfile 1.5.4 test data ..." >&2
  tmp=$(mktemp -d)
  .venv/bin/pip download -q --no-binary :all: --no-deps mrcfile==1.5.4 -d "$tmp"
  mkdir -p "$data"
  tar -xzf "$tmp"/mrcfile-1.5.4.tar.gz -C "$tmp"
  cp -r "$tmp"/mrcfile-1.5.4/tests/test_data/. "$data"/
  rm -rf "$tmp"
  touch "$data/.complete"
fi
