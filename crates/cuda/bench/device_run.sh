#!/usr/bin/env bash
# Runs on the GPU machine (device tool) from the repository root: doctor, GPU tests, per-op and training-step
# benchmarks of cryoden and of PyTorch in the same call. Binaries are built here and carried in targets/cuda/carry
# (see docs/CUDA.md, "Running on the GPU machine"). Everything is also written under $OUT (at most 8 files).
#   bash crates/cuda/bench/device_run.sh [tests] [ops] [torchops] [train] [ourtrain] [engines]   (default: the first four)
# `ourtrain` times cryoden's training step alone (no PyTorch), to save device time between full calls; `small` times
# it on 8 x 256^2 (patch-sized batches, where the CUDA graph matters more), with and without the graph. `engines`
# times the step with cuDNN's legacy picks only, then with the backend-API engines, and prints every conv's legacy
# vs best-engine time (docs/perf/cudnn-engines.md).
set -uo pipefail
B=${CARRY:-targets/cuda/carry}  # where the carried binaries are (CARRY=.gpucarry/NAME)
OUT=${OUT:-/tmp/cryoden-out}
mkdir -p "$OUT"
what="${*:-tests ops torchops train}"
export PYTHONUNBUFFERED=1
{
  date -u; nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,temperature.gpu --format=csv
  if [ -x $B/cryoden ]; then $B/cryoden doctor; else echo "(no cryoden binary carried)"; fi
} 2>&1 | tee "$OUT/doctor.txt"
case "$what" in *tests*)
  $B/gpu_tests --ignored --test-threads=1 --nocapture 2>&1 | tee "$OUT/gpu_tests.txt"
  { $B/model_tests --ignored --test-threads=1 --nocapture; python3 crates/cuda/bench/torch_bench.py parity; } 2>&1 | tee "$OUT/model_tests.txt" ;;
esac
case " $what " in *" ops "*) $B/cudabench ops 2>&1 | tee "$OUT/ops.txt" ;; esac
case "$what" in *torchops*) python3 crates/cuda/bench/torch_bench.py ops 2>&1 | tee "$OUT/torch_ops.txt" ;; esac
case " $what " in *" small "*) $B/cudabench train --size 256 --steps 30 --precision tf32,tf32e,bf16,bf16e 2>&1 | tee "$OUT/train_small.txt" ;; esac
case " $what " in *" engines "*)
  $B/cudabench train --precision f32,tf32,bf16 --engines off 2>&1 | tee "$OUT/train_engines_off.txt"
  $B/cudabench train --precision f32,tf32,bf16 --engines auto --show-engines 2>&1 | tee "$OUT/train_engines.txt" ;;
esac
case " $what " in *" ourtrain "*) $B/cudabench train 2>&1 | tee "$OUT/train.txt" ;; esac
case " $what " in *" train "*)
  $B/cudabench train 2>&1 | tee "$OUT/train.txt"
  python3 crates/cuda/bench/torch_bench.py train 2>&1 | tee "$OUT/torch_train.txt" ;;
esac
