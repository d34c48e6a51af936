#!/usr/bin/env bash
# cryoden's training step with the machine's system cuDNN against the newer cuDNN that PyTorch's wheel ships
# (/opt/torch/.venv, cuDNN 9.19 on the device machine): is the cuDNN version worth anything? cudarc dlopens the
# unversioned libcudnn.so first, which the wheel lacks, so a directory with that one link goes first on the path.
#   CARRY=.gpucarry/NAME bash scripts/gpu/cudnn_versions.sh [precisions]
set -uo pipefail
cd "$(dirname "$0")/../.."
B=$PWD/${CARRY:-.gpucarry/lead}
wheel=$(ls -d /opt/torch/.venv/lib/python3*/site-packages/nvidia/cudnn/lib 2>/dev/null | head -1)
link=/tmp/cudnn-wheel-link
mkdir -p "$link" && ln -sf "$wheel/libcudnn.so.9" "$link/libcudnn.so"
for p in ${1:-bf16 tf32 f32}; do
    for which in system wheel; do
        if [ $which = wheel ]; then lp="$link:$wheel:${LD_LIBRARY_PATH:-}"; else lp="${LD_LIBRARY_PATH:-}"; fi
        echo "=== $p, $which cuDNN"
        LD_LIBRARY_PATH="$lp" "$B/cryoden" doctor 2>&1 | grep -i cudnn | head -2
        steps=20; [ $p = f32 ] && steps=8
        LD_LIBRARY_PATH="$lp" "$B/cryoden" bench train --device cuda --precision $p --size 1024 --batch 8 \
            --steps $steps --warmup 3 2>&1 | tail -2
    done
done
