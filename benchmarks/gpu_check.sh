#!/usr/bin/env bash
# The prepared GPU check (issue: "Measured where our users train"); run from the repo root on a CUDA machine:
#   bash benchmarks/gpu_check.sh [LOG]        (LOG default: $OUT/gpu_check.log, else gpu_check.log)
# 1. installs carried wheels from .whl/ (benchmarks/gpu_wheels.sh fetches them) next to the machine's own
#    torch; 2. the CUDA tests (pytest -m cuda: bf16/fp16 SAM steps vs fp32, device cache, compile,
#    channels_last); 3. one real fold of resnet34_pcen_sam_8fold for 2 epochs on a full-size synthetic set
#    through the CLI; 4. benchmarks/epoch.py for the baseline, the multi-resolution CRNN and wideresnet.
# Each stage has its own time limit so the whole check ends within 9 minutes (one device call is 10); everything printed also
# goes to LOG. The exit code is the number of failed stages. GPU_CHECK_QUICK=1 runs the same stages with
# tiny settings on any device (a CPU dry run of the script itself; .ci/run does that). Python: see `py` below.
set -uo pipefail
cd "$(dirname "$0")/.."
log=${1:-${OUT:-.}/gpu_check.log}
exec > >(tee -a "$log") 2>&1
# The project's own Python: $PYTHON if given, else the repo's .venv (./run.sh makes it), else python3.
if [ -n "${PYTHON:-}" ]; then py=$PYTHON; elif [ -x .venv/bin/python ]; then py=.venv/bin/python; else py=python3; fi
if ! "$py" -c "import torch" 2>/dev/null; then
  echo "gpu_check: $py cannot import torch; run ./run.sh once (it creates .venv) or set PYTHON to the project's Python"
  exit 1
fi
export PYTHONUNBUFFERED=1 US8K_CACHE_DIR=${US8K_CACHE_DIR:-/tmp/us8k-cache}
failed=0
stage() {  # stage NAME SECONDS COMMAND...: run with a limit, report its time and status
  local name=$1 limit=$2; shift 2
  local started=$SECONDS
  echo "=== $name (limit ${limit}s): $*"
  timeout "$limit" "$@"
  local status=$?
  echo "=== $name: exit $status after $((SECONDS - started))s"
  [ "$status" -eq 0 ] || failed=$((failed + 1))
}

echo "gpu_check $(date -u +%FT%TZ) on $(hostname)"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
if compgen -G ".whl/*.whl" > /dev/null; then
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
"$py" - <<'PY'
import importlib
import torch
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, device: "
      f"{torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none'}")
for name in ("numpy", "pandas", "scipy", "sklearn", "timm", "torchaudio", "soundfile", "audiomentations", "typer",
             "rich", "matplotlib", "onnx", "onnxruntime", "tensorboard", "tomli_w", "pytest"):
    try:
        module = importlib.import_module(name)
        print(f"  {name} {getattr(module, '__version__', '?')}")
    except Exception as error:
        print(f"  {name} MISSING ({type(error).__name__}: {error})")
PY

if [ "${GPU_CHECK_QUICK:-0}" = 1 ]; then
  synth=(--clips-per-class-fold 1 --test-clips-per-class 1); fold=(--device auto --max-clips-per-fold 2 --epochs 1)
  race=(--quick); limits=(600 300 600 600 600 600)  # a shared 2-core CI machine
else
  synth=(--clips-per-class-fold 88 --test-clips-per-class 165); fold=(--device cuda --device-cache --workers 4 --epochs 2)
  race=(--steps 10); limits=(170 60 100 100 45 45)
fi
stage "cuda tests" "${limits[0]}" "$py" -m pytest -q -m cuda tests/test_cuda.py -p no:cacheprovider
rm -rf /tmp/us8k-synth /tmp/gpu-fold
stage "synthetic full-size set" "${limits[1]}" "$py" -m core synth --out /tmp/us8k-synth "${synth[@]}" --no-progress
stage "one fold of the baseline through the CLI" "${limits[2]}" "$py" -m core train resnet34_pcen_sam_8fold \
  --data /tmp/us8k-synth --folds 1 "${fold[@]}" --out /tmp/gpu-fold --submissions /tmp/gpu-fold --no-progress
stage "epoch race: baseline" "${limits[3]}" "$py" benchmarks/epoch.py --solution resnet34_pcen_sam_8fold "${race[@]}"
stage "epoch race: multi-resolution CRNN" "${limits[4]}" "$py" benchmarks/epoch.py \
  --solution resnet34_mr_salience_fusion_film_attention "${race[@]}" --no-compile
stage "epoch race: wideresnet" "${limits[5]}" "$py" benchmarks/epoch.py --solution wideresnet "${race[@]}" --no-compile
echo "gpu_check done: $failed failed stage(s); log $log"
exit "$failed"
