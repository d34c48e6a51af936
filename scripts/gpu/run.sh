#!/usr/bin/env bash
# The whole GPU denoising/streaming measurement of issue 6 in ONE device call (docs/perf/gpu-denoise.md records the
# results). Build and carry first (scripts/gpu/prepare_carry.sh), then on the GPU machine, from the repository root:
#
#   bash scripts/gpu/run.sh [PARTS...]        # default: all parts, in this order
#
# Parts (the default list runs in priority order, so a call cut short by its time limit keeps the most important):
#   env       doctor, python packages
#   verify    python/verify.py --device cuda --cryoden: CUDA backend vs PyTorch on the same GPU, f32/tf32/bf16
#   denoise   cryoden bench denoise: Topaz `unet`, 20–50 × 4096² MRC in → MRC out, several tile/batch settings
#   memory    the same tile/batch on 8192² and 6144² (device memory must not change with the image size)
#   accuracy  bf16 and tf32 outputs against f32 on the same micrographs (relative L2)
#   unet      the plan's U-Net: cryoden bench denoise vs PyTorch bf16 inference (bench_torch.py --mode infer)
#   stream    cryoden train --stream vs --in-memory on the GPU, same dataset (images/s)
#   headline  only the two headline denoise settings (Topaz unet and the plan's U-Net, tile 4096, bf16)
#   unet4096  only the plan's U-Net, tile 4096, bf16
#   train     cryoden bench train --device cuda, 8 × 1024², bf16 (not in the default list)
#
# Everything goes to $OUT (the device tool's output folder; default ./gpu-out): one JSON line per measurement in
# results.jsonl and the console log in log.txt.
set -uo pipefail
cd "$(dirname "$0")/../.."
CARRY=${CARRY:-.gpucarry/h3}
BIN=$PWD/$CARRY/cryoden
PY=${PY:-/opt/torch/.venv/bin/python3}
export PYTHONPATH=$PWD/$CARRY/pylib${PYTHONPATH:+:$PYTHONPATH}
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
WORK=${WORK:-/tmp/cryoden-gpu}
mkdir -p "$WORK"
RES=$OUT/results.jsonl
exec > >(tee -a "$OUT/log.txt") 2>&1
parts=("$@")
[ ${#parts[@]} -eq 0 ] && parts=(env denoise unet memory accuracy verify stream)

say() { echo "=== $(date -u +%H:%M:%S) $*"; }
# Runs a command that prints one JSON object on stdout; appends it to results.jsonl tagged with a name.
rec() {
    local name=$1
    shift
    say "$name: $*"
    local t0=$SECONDS
    local line
    line=$("$@" | tail -n 1)
    local rc=$?
    echo "$line"
    if [ -n "$line" ] && [ "${line:0:1}" = "{" ]; then
        echo "{\"name\":\"$name\",\"wall_s\":$((SECONDS - t0)),\"result\":$line}" >> "$RES"
    else
        echo "{\"name\":\"$name\",\"failed\":true}" >> "$RES"
    fi
    return $rc
}

part_env() {
    say env
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
    "$BIN" doctor | head -12
    "$PY" -c 'import torch, sys; print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name(0))'
    "$PY" -c 'import numpy; print("numpy", numpy.__version__)' || echo "no numpy"
    "$PY" -c 'from topaz.denoising.models import UDenoiseNet; print("topaz UDenoiseNet importable")' || echo "no topaz"
    nproc; free -g | head -2; df -h "$WORK" | tail -1
}

part_verify() {
    say verify
    "$PY" python/verify.py --all "$WORK/fx" --device cuda --cryoden "$BIN"
    "$BIN" bench parity --device cuda --precision f32 --json "$WORK"/fx/*.safetensors > "$OUT/parity_f32.jsonl"
    "$BIN" bench parity --device cuda --precision bf16 --json "$WORK"/fx/*.safetensors > "$OUT/parity_bf16.jsonl"
}

bench_dn() { # name, then bench denoise flags
    local name=$1
    shift
    rec "$name" "$BIN" bench denoise --device cuda --dir "$WORK/bd" --json "$@"
    rm -rf "$WORK/bd"
}

part_denoise() {
    # The CLI's defaults (tile 1024, batch 1), then larger tiles and batches (fewer, larger cuDNN calls). cuDNN's
    # legacy descriptors hold at most 2^31 elements per tensor: Topaz's 97-channel map limits batch × window²
    # (tile 2048 + 2 × 192 context: batch ≤ 3).
    bench_dn topaz_t4096_b1_bf16 --arch topaz-unet --size 4096 --files 40 --precision bf16 --tile 4096 --batch 1
    bench_dn topaz_t4096_b1_bf16_mrc16 --arch topaz-unet --size 4096 --files 20 --precision bf16 --tile 4096 \
        --batch 1 --format mrc16
    bench_dn topaz_t2048_b2_bf16 --arch topaz-unet --size 4096 --files 20 --precision bf16 --tile 2048 --batch 2
    bench_dn topaz_t1024_b4_bf16 --arch topaz-unet --size 4096 --files 20 --precision bf16 --tile 1024 --batch 4
    bench_dn topaz_t1024_b1_bf16 --arch topaz-unet --size 4096 --files 10 --precision bf16 --tile 1024 --batch 1
    bench_dn topaz_t4096_b1_tf32 --arch topaz-unet --size 4096 --files 10 --precision tf32 --tile 4096 --batch 1
}

part_memory() {
    bench_dn mem_8192_t2048_b2_bf16 --arch topaz-unet --size 8192 --files 3 --warmup 1 --precision bf16 \
        --tile 2048 --batch 2
    bench_dn mem_6144_t2048_b2_bf16 --arch topaz-unet --size 6144 --files 3 --warmup 1 --precision bf16 \
        --tile 2048 --batch 2
}

part_accuracy() {
    for p in f32 tf32 bf16; do
        rm -rf "$WORK/acc_$p"
        rec "acc_$p" "$BIN" bench denoise --device cuda --arch topaz-unet --size 4096 --files 3 --warmup 1 \
            --precision "$p" --tile 4096 --batch 1 --dir "$WORK/acc_$p" --keep --json
    done
    "$PY" scripts/gpu/compare_mrc.py "$WORK/acc_f32/out" "$WORK/acc_tf32/out" "$WORK/acc_bf16/out" | tee -a "$RES"
    rm -rf "$WORK"/acc_*
}

part_unet() {
    # The plan's U-Net (unet[32,64,128,256], receptive radius 51 → context 56). Tile 4096 = the whole micrograph
    # in one window (no context overhead); tile 1024 batch 8 = 1136² windows, (1136/1024)² = 1.23× the pixels.
    bench_dn unet_t4096_b1_bf16 --arch unet --size 4096 --files 20 --precision bf16 --tile 4096 --batch 1
    bench_dn unet_t1024_b8_bf16 --arch unet --size 4096 --files 15 --precision bf16 --tile 1024 --batch 8
    rec torch_unet_4096_b1_bf16 "$PY" python/bench_torch.py --mode infer --device cuda --arch unet --size 4096 \
        --batch 1 --dtype bf16 --channels-last --steps 10 --warmup 3 --json
    rec torch_unet_1136_b8_bf16 "$PY" python/bench_torch.py --mode infer --device cuda --arch unet --size 1136 \
        --batch 8 --dtype bf16 --channels-last --steps 10 --warmup 3 --json
}

part_stream() {
    say "stream: dataset"
    rm -rf "$WORK/st"
    mkdir -p "$WORK/st"
    "$BIN" bench denoise --device cpu --arch unet --widths 4,8 --size 2048 --files 16 --warmup 1 --tile 2048 \
        --dir "$WORK/st/mics" --keep > /dev/null
    "$BIN" prepare --clean "$WORK/st/mics/in" --noise gaussian:0.5 --out "$WORK/st/ds" --patch 256 \
        --val-fraction 0.1 --seed 1 | tail -2
    du -sh "$WORK/st/ds"
    for mode in in-memory stream; do
        say "train --$mode"
        "$BIN" train --device cuda --precision bf16 --data "$WORK/st/ds" --out "$WORK/st/run_$mode" --epochs 3 \
            --batch 8 --seed 1 --sample-every 0 "--$mode" 2>&1 | grep -E "epoch|done|loader|error" | tail -8
        "$PY" - "$WORK/st/run_$mode/metrics.jsonl" "$mode" >> "$RES" <<'PY'
import json, sys
recs = [json.loads(l) for l in open(sys.argv[1])]
ep = [r for r in recs if r.get("kind") == "epoch"]
print(json.dumps({"name": "train_" + sys.argv[2], "epochs": [
    {"epoch": r["epoch"], "images_per_s": r["images_per_s"], "val_loss": r["val_loss"]} for r in ep]}))
PY
        tail -n 1 "$RES"
    done
    rm -rf "$WORK/st"
}

part_headline() {
    # The two headline settings only (a short call).
    bench_dn topaz_t4096_b1_bf16 --arch topaz-unet --size 4096 --files 50 --precision bf16 --tile 4096 --batch 1
    bench_dn unet_t4096_b1_bf16 --arch unet --size 4096 --files 30 --precision bf16 --tile 4096 --batch 1
}

part_unet4096() {
    bench_dn unet_t4096_b1_bf16 --arch unet --size 4096 --files 25 --precision bf16 --tile 4096 --batch 1
}

part_train() {
    for p in bf16; do
        rec "bench_train_$p" "$BIN" bench train --device cuda --precision "$p" --size 1024 --batch 8 --steps 20 \
            --warmup 3 --json
    done
}

for p in "${parts[@]}"; do
    "part_$p" || say "part $p failed (rc $?)"
done
say done
