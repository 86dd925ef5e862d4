#!/usr/bin/env bash
# The GPU check (issue 17): on one H100/H200, in under 8 minutes, from a clean checkout:
#   1. install as the README says (on a machine without a package registry: into the Python that already has torch,
#      without dependencies, which is recorded);
#   2. the CUDA-marked tests;
#   3. the A2MIM / supervised step ratio for ResNet-50 at 224 px, bf16, channels_last, fused AdamW, compile off and on
#      (benchmarks/pretrain_step.py; target <= 1.15);
#   4. end-to-end pretraining img/s on a generated JPEG folder (benchmarks/train_throughput.py; target >= 3,000), eager
#      and compiled, PIL decoding in the workers and, where nvidia-dali is installed, DALI on the GPU;
#   5. loader img/s per worker, float vs uint8 batches (benchmarks/loader.py).
# Everything lands in one JSON, $OUT/gpu_check.json (OUT defaults to ./gpu_check), with the logs beside it.
#   bash benchmarks/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
log() { echo "[$(date +%T)] $*"; }

install="readme"
if ! timeout 120 pip install -q --retries 0 --timeout 5 -c constraints.txt -e ".[dev]" > "$OUT/install.log" 2>&1; then
    install="offline: pip install --no-deps -e . into the Python that has torch"
    python3 -m pip install -q --no-deps --no-build-isolation -e . >> "$OUT/install.log" 2>&1 || { log "install failed"; exit 1; }
fi
log "installed ($install)"

timeout 90 python3 -m pytest -q -m cuda -p no:cacheprovider tests > "$OUT/cuda_tests.log" 2>&1
tests_rc=$?
log "CUDA tests: exit $tests_rc"

timeout 200 python3 benchmarks/pretrain_step.py --device cuda --backbone resnet50 --size 224 --batch 256 --compile --breakdown \
    --steps 15 --warmup 5 --json "$OUT/step.json" > "$OUT/step.log" 2>&1
log "step ratio: exit $?"

decoders="pil"
python3 -c "import nvidia.dali" 2> /dev/null && decoders="pil dali"  # DALI only where its wheel was installed
timeout 240 python3 benchmarks/train_throughput.py --images 12800 --modes eager compiled --decoders $decoders \
    --json "$OUT/throughput.json" > "$OUT/throughput.log" 2>&1
log "throughput: exit $?"

timeout 60 python3 benchmarks/loader.py --sizes 500 --workers 4 8 --images 2048 --passes 2 > "$OUT/loader.log" 2>&1
log "loader: exit $?"

python3 - "$OUT" "$install" "$tests_rc" <<'PY'
import json, pathlib, sys
out, install, tests_rc = pathlib.Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
def read(name):
    path = out / name
    return json.loads(path.read_text()) if path.exists() else None
summary = {
    "install": install,
    "cuda_tests_exit": tests_rc,
    "cuda_tests": (out / "cuda_tests.log").read_text().strip().splitlines()[-1:],
    "step": read("step.json"),
    "throughput": read("throughput.json"),
    "loader": [json.loads(l) for l in (out / "loader.log").read_text().splitlines() if l.startswith("{")],
}
(out / "gpu_check.json").write_text(json.dumps(summary, indent=1) + "\n")
print(json.dumps(summary, indent=1))
PY
