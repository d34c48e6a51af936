#!/usr/bin/env bash
# cryoden's own bf16 3x3 conv kernels (crates/cuda/src/device/mma.rs) on the GPU machine (device tool): their
# correctness test, per-layer times against cuDNN, and the training step with them off and on.
#   CARRY=.gpucarry/NAME bash scripts/gpu/conv_mma.sh [tests] [fused] [alltests] [ops] [train] [ncu]
# Carry: $CARRY/{gpu_tests,model_tests,arena_tests,denoise_tests,cudabench,cryoden} (built here, docs/CUDA.md).
set -uo pipefail
cd "$(dirname "$0")/../.."
B=$PWD/${CARRY:-.gpucarry/s4}
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/conv_mma_log.txt") 2>&1
parts=("$@")
[ ${#parts[@]} -eq 0 ] && parts=(tests ops train)
say() { echo "=== $(date -u +%H:%M:%S) $*"; }
for part in "${parts[@]}"; do
    case $part in
    tests)
        say "mma_conv_matches_cpu"
        "$B/gpu_tests" --ignored --exact mma_conv_matches_cpu --nocapture 2>&1 | grep -E '^mma|^test |test result|panicked|skipped' ;;
    fused)
        say "fused_activation_backward_matches_two_passes"
        "$B/gpu_tests" --ignored --exact fused_activation_backward_matches_two_passes --nocapture 2>&1 | grep -E '^fused|^test |test result|panicked' | tail -40 ;;
    alltests)
        say "gpu_tests"
        "$B/gpu_tests" --ignored --test-threads=1 2>&1 | grep -E '^test |test result|panicked|FAILED' | tail -30
        say "model_tests"
        "$B/model_tests" --ignored --test-threads=1 --nocapture 2>&1 | grep -E '^(unet|topaz)|^test |test result|panicked|> ' | tail -40
        for t in arena_tests denoise_tests; do
            say "$t"
            "$B/$t" --ignored --test-threads=1 2>&1 | grep -E '^test |test result|panicked' | tail -12
        done ;;
    ops)
        say "cudabench ops bf16 (cuDNN per direction, then ours)"
        "$B/cudabench" ops --precision bf16 2>&1 | grep -v '^JSON' ;;
    train)
        for m in ${MODES:-off on}; do
            say "CRYODEN_MMA_CONV=$m cudabench train bf16"
            CRYODEN_MMA_CONV=$m "$B/cudabench" train --precision bf16 2>&1 | grep -v '^JSON'
            say "CRYODEN_MMA_CONV=$m cryoden bench train bf16 8 x 1024²"
            CRYODEN_MMA_CONV=$m "$B/cryoden" bench train --device cuda --precision bf16 --size 1024 --batch 8 --steps 20 --warmup 3 2>&1 | tail -4
        done ;;
    ncu)
        # One launch of each of our forward / weight-gradient kernels on the 32 -> 32 layer under Nsight Compute.
        say "ncu"
        NCU=$(command -v ncu || ls /usr/local/cuda*/bin/ncu /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
        if [ -z "$NCU" ]; then echo "no ncu on this machine"; else
            "$NCU" --kernel-name regex:'conv3_(fwd_32_32_v0|wgrad_32_32_v4)' --launch-count 2 \
                --section SpeedOfLight --section WarpStateStats --section MemoryWorkloadAnalysis --section Occupancy \
                "$B/cudabench" ops --precision bf16 --reps 3 2>&1 | grep -v '^JSON' | tail -150
        fi ;;
    *) echo "unknown part $part" ;;
    esac
done
