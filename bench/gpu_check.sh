#!/usr/bin/env bash
# The prepared GPU check (docs/gpu.md): on a lent machine with an NVIDIA GPU, PyTorch + CUDA + Triton, onnx and
# onnxruntime but no network, install this checkout without downloading anything, run the GPU tests and one
# `advisor recommend` with the PyTorch backend, and keep the logs and the report in bench/results/gpu-check-DATE/.
# Under 6 minutes: the tests are the `gpu`-marked ones only, the recommend budget is 120 s.
#
#   bash bench/gpu_check.sh            # exit 0: all ran; 1: a step failed; 2: this machine cannot run the check
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
RESULTS=${RESULTS:-bench/results/gpu-check-$(date -u +%Y%m%d-%H%M%S)}
mkdir -p "$RESULTS"
LOG="$RESULTS/gpu-check.log"
say() { echo "gpu_check: $*" | tee -a "$LOG"; }
fail() { say "error: $1"; exit "${2:-1}"; }

# ---- 1. what this machine has (refuse clearly where it cannot run the check) -------------------------------------
command -v nvidia-smi >/dev/null 2>&1 || fail "no nvidia-smi: this machine has no NVIDIA GPU (the check needs one)" 2
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >>"$LOG" 2>&1 \
  || fail "nvidia-smi finds no GPU" 2
"$PYTHON" - >>"$LOG" 2>&1 <<'EOF' || fail "torch cannot use CUDA here (see $LOG)" 2
import sys, torch
print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda)
assert torch.cuda.is_available(), "torch.cuda.is_available() is False"
print("device", torch.cuda.get_device_name(0))
EOF

# the project's base dependencies (pyproject.toml) and the test runner: a machine without network cannot install
# them, so say exactly which are missing rather than fail on an ImportError later
MISSING=$("$PYTHON" - <<'EOF'
import importlib.util
modules = {"onnx": "onnx", "onnxruntime": "onnxruntime", "onnxslim": "onnxslim", "numpy": "numpy",
           "sklearn": "scikit-learn", "click": "click", "jinja2": "jinja2", "rich": "rich", "yaml": "pyyaml",
           "pydantic": "pydantic", "psutil": "psutil", "filelock": "filelock", "platformdirs": "platformdirs",
           "httpx": "httpx", "pytest": "pytest", "triton": "triton"}
print(" ".join(package for module, package in modules.items() if importlib.util.find_spec(module) is None))
EOF
)
say "missing Python packages: ${MISSING:-none}"
WHEELS=bench/wheels  # optional: small pure-Python wheels carried with the repository for such machines
if [ -n "$MISSING" ] && [ -d "$WHEELS" ]; then
  say "installing from $WHEELS (no network): $MISSING"
  "$PYTHON" -m pip install --no-index --find-links "$WHEELS" $MISSING >>"$LOG" 2>&1 || say "some did not install"
fi

# ---- 2. the project itself, without network --------------------------------------------------------------------
if "$PYTHON" -m pip install --no-deps --no-build-isolation --no-index -e . >>"$LOG" 2>&1; then
  say "installed this checkout (pip -e, no dependencies)"
else
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # no setuptools or no pip: run from the checkout
  say "pip install -e failed; running from the checkout with PYTHONPATH"
fi
ADVISOR=("$PYTHON" -c "from advisor.cli import main; main()")
"$PYTHON" -c "import advisor.cli, tuners.pytorch" >>"$LOG" 2>&1 \
  || fail "the advisor does not import here (missing: ${MISSING:-see $LOG})"
"$PYTHON" -c "import onnx2torch" >/dev/null 2>&1 \
  || say "onnx2torch is not installed: ONNX sources cannot be converted (pip install --no-deps onnx2torch==1.5.15)"

# ---- 3. the GPU tests --------------------------------------------------------------------------------------------
STATUS=0
say "running pytest -m gpu"
timeout 200 "$PYTHON" -m pytest -m gpu -rs -q -p no:cacheprovider tests >"$RESULTS/pytest-gpu.log" 2>&1
code=$?
tail -n 15 "$RESULTS/pytest-gpu.log" | tee -a "$LOG"
[ "$code" -eq 0 ] || { say "pytest -m gpu exited $code"; STATUS=1; }

# ---- 4. one recommendation with the PyTorch backend -------------------------------------------------------------
say "running advisor recommend examples/tiny_cnn.onnx --backends pytorch,onnxruntime"
timeout 240 "${ADVISOR[@]}" recommend examples/tiny_cnn.onnx --slo 20ms --backends pytorch,onnxruntime \
  --budget 120 --out "$RESULTS/run" >"$RESULTS/recommend.log" 2>&1
code=$?
tail -n 25 "$RESULTS/recommend.log" | tee -a "$LOG"
# 0: a recommendation; 3: none met the SLO (still a complete run)
[ "$code" -eq 0 ] || [ "$code" -eq 3 ] || { say "advisor recommend exited $code"; STATUS=1; }
say "results in $RESULTS (status $STATUS)"
exit "$STATUS"
