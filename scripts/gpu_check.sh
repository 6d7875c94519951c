#!/usr/bin/env bash
# End-to-end TensorRT check for a machine with an NVIDIA GPU and the [tensorrt] extra installed
# (pip install -e '.[all,tensorrt]'). In order, each part going on whatever the one before did:
#   1. first contact (scripts/trt_first_contact.py): a 512x512 MatMul plan, its error against float64
#      (TF32 would show as ~1e-3), 4x the profile's max batch through run_chunked, buffers and stream
#      released on close;
#   2. the gpu-marked tests: strongly typed plans of a small CNN from its FP32, FP16 and INT8 (Q/DQ)
#      graphs, run in the engine runner against ONNX Runtime;
#   3. for every zoo network, one plan from its FP32 graph (the fp16 and int8-trt graphs are built and
#      validated in ONNX Runtime), run in the engine runner and validated against the golden set;
#   4. each plan published as a tensorrt_plan model;
#   5. the repository checked with the plans deserialized on this GPU.
# Then every build-summary.json under OUT is listed, with the parts that failed. Exit 1 if any part
# failed; on a machine without a GPU or TensorRT every part says "skipped: no GPU" and the exit is 0.
#
#   bash scripts/gpu_check.sh [OUT] [ZOO_NETWORK ...]     (defaults: gpu-check-out, the default zoo set)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-gpu-check-out}
shift || true
NETWORKS=("$@")
[ ${#NETWORKS[@]} -gt 0 ] || NETWORKS=(facile jet_mlp deepjet particlenet interaction_network)
PY=${PYTHON:-.venv/bin/python}
HEPDEPLOY=("$PY" -m hepdeploy)
mkdir -p "$OUT"
REPORT="$OUT/gpu-check-report.txt"
: > "$REPORT"
FAILED=()

say() { echo "gpu_check: $*" | tee -a "$REPORT"; }

# Why TensorRT cannot run here (empty: it can).
NO_GPU=$("$PY" -c '
from hepdeploy.backend.trt import tensorrt_unavailable
print(tensorrt_unavailable() or "")' 2>&1) || NO_GPU="hepdeploy cannot be imported: $NO_GPU"
if [ -z "$NO_GPU" ]; then
    "$PY" -c '
import tensorrt
from hepdeploy.backend.cudart import cuda_device
from hepdeploy.plan_compat import tensorrt_full_version
device, version = cuda_device(), tensorrt_full_version(tensorrt)
print(f"gpu_check: TensorRT {version.text} (from {version.source}) on {device.name} "
      f"(compute capability {device.compute_capability})")' | tee -a "$REPORT"
fi

# part NAME COMMAND...: runs COMMAND where there is a GPU, records a failure and goes on.
part() {
    local name=$1
    shift
    if [ -n "$NO_GPU" ]; then
        say "$name: skipped: no GPU ($NO_GPU)"
        return 0
    fi
    say "$name: running"
    "$@"
    local rc=$?
    if [ $rc -eq 0 ]; then say "$name: ok"; else say "$name: FAILED (exit $rc)"; FAILED+=("$name"); fi
}

part "first contact" "$PY" scripts/trt_first_contact.py "$OUT/first-contact"
part "gpu tests" "$PY" -m pytest -q -m gpu tests/optimize/test_tensorrt.py

zoo_args=()
for network in "${NETWORKS[@]}"; do zoo_args+=(--zoo "$network"); done
# --require-gpu: a plan that cannot be built is an error here, not a skipped step. The build goes on
# to the other networks after one fails; build-summary.json records each.
part "build" "${HEPDEPLOY[@]}" build "${zoo_args[@]}" --budget reduced -o "$OUT" --require-gpu \
    --variant fp32 --variant fp16 --variant int8-trt --variant tensorrt

publish() {
    local network=$1 plan="$OUT/$1/variants/$1_tensorrt.plan"
    [ -f "$plan" ] || { echo "gpu_check: no plan for $network (see $OUT/build-summary.json)"; return 1; }
    "${HEPDEPLOY[@]}" triton add "$OUT/model_repository" "$plan" --name "${network}_trt" \
        --warmup "$OUT/$network/golden.npz"
}
for network in "${NETWORKS[@]}"; do part "publish $network" publish "$network"; done
# The plans are deserialized on this GPU here (a note, not a pass, where they cannot be).
part "triton check" "${HEPDEPLOY[@]}" triton check "$OUT/model_repository"

summaries=$(find "$OUT" -name build-summary.json 2>/dev/null | sort)
say "build summaries: ${summaries:-none}"
if [ -n "$NO_GPU" ]; then
    say "done: skipped: no GPU (report: $REPORT)"
elif [ ${#FAILED[@]} -gt 0 ]; then
    say "done: ${#FAILED[@]} part(s) failed: ${FAILED[*]} (report: $REPORT)"
    exit 1
else
    say "done: all parts passed (report: $REPORT)"
fi
exit 0
