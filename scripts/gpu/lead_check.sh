#!/usr/bin/env bash
# End-of-session check on the GPU machine (device tool), one call: GPU tests, the CLI with its defaults
# (--device auto, default tile), a trained model's output per precision against the CPU, and the headline
# benchmarks again. Carry (built here, see docs/CUDA.md): $CARRY/{cryoden,gpu_tests,model_tests} and
# $CARRY/data/{best.safetensors, even/*.mrc, truth/*.mrc} (a `cryoden demo` run's model, held-out halves, truth).
#
#   CARRY=.gpucarry/lead bash scripts/gpu/lead_check.sh [tests] [cli] [bench] [pipeline] [denoise_ab] [f64] [infer_vs_torch] [train_vs_torch]
set -uo pipefail
cd "$(dirname "$0")/../.."
CARRY=${CARRY:-.gpucarry/lead}
B=$PWD/$CARRY
PY=${PY:-/opt/torch/.venv/bin/python3}
OUT=${OUT:-$PWD/gpu-out}
W=${WORK:-/tmp/lead}
mkdir -p "$OUT" "$W"
exec > >(tee -a "$OUT/lead_log.txt") 2>&1
parts=("$@")
[ ${#parts[@]} -eq 0 ] && parts=(tests cli bench)
say() { echo "=== $(date -u +%H:%M:%S) $*"; }

part_tests() {
    say "gpu_tests"
    "$B/gpu_tests" --ignored --test-threads=1 2>&1 | grep -E '^test |test result|panicked|FAILED' | tail -30
    say "model_tests"
    "$B/model_tests" --ignored --test-threads=1 --nocapture 2>&1 | grep -E '^(unet|topaz)|^test |test result|panicked|> ' | tail -40
    for t in arena_tests; do  # denoise_tests: part pipeline
        [ -x "$B/$t" ] || continue
        say "$t"
        "$B/$t" --ignored --test-threads=1 2>&1 | grep -E '^test |test result|panicked' | tail -12
    done
}

# cryoden's training step (`cryoden bench train`, the CLI's path) in each precision, then PyTorch's in the same
# call (crates/cuda/bench/torch_bench.py train: fp32, tf32, bf16 autocast + channels_last, + torch.compile).
part_train_vs_torch() {
    for p in ${PRECISIONS:-bf16 tf32 f32}; do
        say "cryoden bench train unet 8 x 1024² $p"
        steps=20; [ $p = f32 ] && steps=8
        "$B/cryoden" bench train --device cuda --precision $p --size 1024 --batch 8 --steps $steps --warmup 3 2>&1 | tail -3
    done
    say "PyTorch training step, same shapes"
    "$PY" crates/cuda/bench/torch_bench.py train --modes "${TORCH_MODES:-fp32,tf32,bf16,bf16-compile}" 2>&1 |
        grep -E '^(fp32|tf32|bf16)'
}

part_cli() {
    D=$B/data
    say "doctor"
    "$B/cryoden" doctor | head -8
    say "denoise with every default (auto device, default tile and precision)"
    /usr/bin/time -f "wall %e s, peak RSS %M kB" "$B/cryoden" denoise -m "$D/best.safetensors" "$D/even" -o "$W/dn_default" 2>&1 | tail -4
    for p in f32 tf32 bf16; do
        "$B/cryoden" denoise -m "$D/best.safetensors" "$D/even" -o "$W/dn_$p" --device cuda --precision "$p" 2>&1 | tail -1
    done
    "$B/cryoden" denoise -m "$D/best.safetensors" "$D/even" -o "$W/dn_cpu" --device cpu 2>&1 | tail -1
    say "trained model: each GPU precision against the CPU (f32), relative L2 raw and with the reference's mean removed"
    "$PY" - "$W" <<'PY'
import json, os, struct, sys, torch
def read(p):
    b = open(p, "rb").read()
    nx, ny, nz, mode = struct.unpack("<4i", b[:16]); off = 1024 + struct.unpack("<i", b[92:96])[0]
    assert mode == 2, p
    return torch.frombuffer(bytearray(b[off:off + 4 * nx * ny * nz]), dtype=torch.float32).double()
w = sys.argv[1]
for d in ["dn_default", "dn_f32", "dn_tf32", "dn_bf16"]:
    for n in sorted(os.listdir(f"{w}/dn_cpu")):
        r, a = read(f"{w}/dn_cpu/{n}"), read(f"{w}/{d}/{n}")
        rc = r - r.mean()
        print(json.dumps({"vs_cpu": d, "file": n, "rel_l2": float((a - r).norm() / r.norm()),
                          "rel_l2_centered": float((a - r).norm() / rc.norm())}))
PY
    say "evaluate on the GPU (auto) against the truth"
    "$B/cryoden" evaluate -m "$D/best.safetensors" --input "$D/even" --truth "$D/truth" --out "$W/eval" 2>&1 | tail -8
}

part_bench() {
    say "bench denoise: Topaz unet, 4096², 50 files, bf16, tile 4096"
    "$B/cryoden" bench denoise --device cuda --arch topaz-unet --size 4096 --files 50 --precision bf16 --tile 4096 \
        --batch 1 --dir "$W/bd" --json | tail -1
    rm -rf "$W/bd"
    say "bench denoise: the plan's U-Net, 4096², 25 files, bf16, tile 4096"
    "$B/cryoden" bench denoise --device cuda --arch unet --size 4096 --files 25 --precision bf16 --tile 4096 \
        --batch 1 --dir "$W/bd" --json | tail -1
    rm -rf "$W/bd"
    say "bench train (the CLI's training step): unet, 8 x 1024², bf16"
    "$B/cryoden" bench train --device cuda --precision bf16 --size 1024 --batch 8 --steps 20 --warmup 3 --json | tail -1
}

# The denoise pipeline on the GPU against the CPU (crates/cuda/tests/denoise.rs), and the trained model's
# outputs per precision against the CPU's through the CLI (no truth needed).
part_pipeline() {
    say "denoise_tests"
    "$B/denoise_tests" --ignored --test-threads=1 --nocapture 2>&1 | grep -E 'rel L2|^test |test result|panicked' | tail -30
    D=$B/data
    for p in f32 tf32 bf16; do
        "$B/cryoden" denoise -m "$D/best.safetensors" "$D/even" -o "$W/dn_$p" --device cuda --precision "$p" 2>&1 | tail -1
    done
    "$B/cryoden" denoise -m "$D/best.safetensors" "$D/even" -o "$W/dn_cpu" --device cpu 2>&1 | tail -1
    "$PY" scripts/gpu/compare_mrc.py "$W/dn_cpu" "$W/dn_f32" "$W/dn_tf32" "$W/dn_bf16" 2>&1 | tail -12
}

# Denoise throughput of $B/cryoden_base (an earlier build) against $B/cryoden, same call.
part_denoise_ab() {
    for bin in cryoden_base cryoden; do
        for arch in unet topaz-unet; do
            say "$bin bench denoise $arch 4096² bf16 tile 4096"
            "$B/$bin" bench denoise --device cuda --arch $arch --size 4096 --files 30 --precision bf16 --tile 4096 \
                --batch 1 --dir "$W/bd" --json | tail -1
            rm -rf "$W/bd"
        done
    done
}

# f32 gradients against float64 fixtures ($B/f64/*.safetensors, `python/verify.py --f64`), cryoden's CPU and CUDA
# backends; PyTorch's own f32 (CPU and GPU) against float64 (python/grad_vs_f64.py).
part_f64() {
    for f in "$B"/f64/*.safetensors; do
        for dev in cpu cuda; do "$B/cryoden" bench parity "$f" --device $dev --precision f32 2>&1 | tail -1; done
    done
    PYTHONPATH="$B/pylib" "$PY" python/grad_vs_f64.py --arch topaz-unet --seeds 0,1,2 2>&1 | tail -4
}

# PyTorch's bf16 forward alone (autocast + channels_last, input already on the GPU) against cryoden's whole
# MRC -> MRC pipeline, same call.
part_infer_vs_torch() {
    say "PyTorch bf16 inference, the plan's U-Net, 1 x 4096²"
    "$PY" python/bench_torch.py --mode infer --device cuda --arch unet --size 4096 --batch 1 --dtype bf16 \
        --channels-last 2>&1 | tail -2
    for k in 1 2; do
        say "cryoden bench denoise unet 4096² bf16 tile 4096, run $k"
        "$B/cryoden" bench denoise --device cuda --arch unet --size 4096 --files 30 --precision bf16 --tile 4096 \
            --batch 1 --dir "$W/bd" --json | tail -1
        rm -rf "$W/bd"
    done
}

for p in "${parts[@]}"; do
    "part_$p" || say "part $p failed (rc $?)"
done
say done
