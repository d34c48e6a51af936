#!/usr/bin/env bash
# The training loop (`cryoden train`) on the GPU, session 2's recipe (docs/PERFORMANCE.md, "Batch upload overlap"):
# 32 synthetic 2048² micrographs → 116 training pairs of 1024² → 4 epochs of 8 × 1024² bf16 steps. Prints the
# step records' median time (epochs 2-4), each epoch's images/s and validation loss, and the last training loss;
# session 2 recorded val_loss 0.5613886912663778, 0.5331492026646932, 0.4813803434371948, 0.4503341317176819 and
# last loss 0.45273226499557495 for this data, which must come out the same.
#   CARRY=.gpucarry/NAME [BIN=cryoden_base] [PREC=f32] [EPOCHS=2] bash scripts/gpu/train_loop.sh
set -uo pipefail
cd "$(dirname "$0")/../.."
B=$PWD/${CARRY:-.gpucarry/lead}
BIN=${BIN:-cryoden}  # the binary under $B that trains (e.g. an earlier build, to compare in the same call)
D=${WORK:-/tmp/loop}
mkdir -p "$D"
[ -d "$D/ds" ] || "$B/cryoden" bench denoise --device cpu --arch unet --widths 4,8 --size 2048 --files 32 --warmup 1 --tile 2048 \
    --dir "$D/mics" --keep > /dev/null
[ -d "$D/ds" ] || "$B/cryoden" prepare --clean "$D/mics/in" --noise gaussian:0.5 --out "$D/ds" --patch 1024 --val-fraction 0.1 \
    --seed 1 2>&1 | tail -1
for k in 1 2; do
    rm -rf "$D/run"
    "$B/$BIN" train --device cuda --precision "${PREC:-bf16}" --data "$D/ds" --out "$D/run" --epochs "${EPOCHS:-4}" \
        --batch 8 --seed 1 \
        --sample-every 0 --in-memory > /dev/null 2>&1 || echo "train failed"
    python3 - "$D/run/metrics.jsonl" <<'PY'
import json, statistics, sys
recs = [json.loads(l) for l in open(sys.argv[1])]
steps = [r for r in recs if r.get("kind") == "step" and r.get("epoch", 0) >= 2]
epochs = [r for r in recs if r.get("kind") == "epoch"]
ms = sorted(8000.0 / r["images_per_s"] for r in steps if r.get("images_per_s"))
last = [r for r in recs if r.get("kind") == "step"][-1]
print(json.dumps({"step_ms_median": round(statistics.median(ms), 2), "step_ms_p10_p90": [round(ms[len(ms) // 10], 2),
      round(ms[(9 * len(ms)) // 10], 2)], "epoch_images_per_s": [round(e.get("images_per_s", 0), 1) for e in epochs],
      "val_loss": [e.get("val_loss") for e in epochs], "last_loss": last.get("loss")}))
PY
done
