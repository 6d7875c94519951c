#!/usr/bin/env bash
# End-to-end TensorRT check for a machine with an NVIDIA GPU and the [tensorrt] extra installed
# (pip install -e '.[all,tensorrt]'): for every zoo network, build a strongly typed plan from the
# fp32, fp16 and int8-trt graphs, run it in the TensorRT engine runner and validate it against
# the golden set (the build does both), publish the plan as a tensorrt_plan model, and check the
# repository with the plan deserialized on this GPU. Then run the gpu-marked tests.
#
#   bash scripts/gpu_check.sh [OUT] [ZOO_NETWORK ...]     (defaults: gpu-check-out, the default zoo set)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-gpu-check-out}
shift || true
NETWORKS=("$@")
[ ${#NETWORKS[@]} -gt 0 ] || NETWORKS=(facile jet_mlp deepjet particlenet interaction_network)
PY=${PYTHON:-.venv/bin/python}
HEPDEPLOY=("$PY" -m hepdeploy)

"$PY" - <<'PY'
from hepdeploy.backend.trt import tensorrt_unavailable
reason = tensorrt_unavailable()
if reason:
    raise SystemExit(f"gpu_check: TensorRT cannot run here: {reason}")
import tensorrt
from hepdeploy.backend.cudart import cuda_device
device = cuda_device()
print(f"gpu_check: TensorRT {tensorrt.__version__} on {device.name} (compute capability {device.compute_capability})")
PY

zoo_args=()
for network in "${NETWORKS[@]}"; do zoo_args+=(--zoo "$network"); done
# --require-gpu: a plan that cannot be built is an error here, not a skipped step.
"${HEPDEPLOY[@]}" build "${zoo_args[@]}" --budget reduced -o "$OUT" --require-gpu \
    --variant fp32 --variant fp16 --variant int8-trt --variant tensorrt

for network in "${NETWORKS[@]}"; do
    plan="$OUT/$network/variants/${network}_tensorrt.plan"
    [ -f "$plan" ] || { echo "gpu_check: no plan for $network (see $OUT/build-summary.json)"; exit 1; }
    "${HEPDEPLOY[@]}" triton add "$OUT/model_repository" "$plan" --name "${network}_trt" \
        --warmup "$OUT/$network/golden.npz"
done
# The plans are deserialized on this GPU here (a note, not a pass, where they cannot be).
"${HEPDEPLOY[@]}" triton check "$OUT/model_repository"
"$PY" -m pytest -q -m gpu tests/optimize/test_tensorrt.py
echo "gpu_check: all networks built, validated, published and checked"
