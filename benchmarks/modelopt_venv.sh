#!/usr/bin/env bash
# Build a venv with NVIDIA Model Optimizer's ONNX PTQ on a CPU-only machine, for benchmarks/modelopt_compare.py.
#
#   bash benchmarks/modelopt_venv.sh [VENV_DIR]        (default .venv-modelopt)
#   EDGE_RESNET_MODELOPT_PYTHON=VENV_DIR/bin/python python benchmarks/modelopt_compare.py
#
# The recipe of issue 12: nvidia-modelopt 0.47.0 with --no-deps (its dependencies pull CUDA packages: cupy,
# onnxruntime-gpu), then its CPU needs by hand (benchmarks/modelopt-requirements.txt, pinned and installed with
# --no-deps: onnx 1.21, onnxruntime 1.24, onnx-graphsurgeon, polygraphy, onnxslim, onnxconverter-common, pydantic,
# omegaconf, pulp, rich, safetensors, ml_dtypes, nvidia-ml-py, ninja, lief, cppimport, and onnxscript, onnx_ir and
# regex, which modelopt.onnx also imports), with torch pinned by constraints.txt (an unpinned torch pulls GBs of
# CUDA). Keep it out of the project's venv: ModelOpt pins onnx/onnxruntime versions of its own.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${1:-.venv-modelopt}"
python3 -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install -q -c constraints.txt)
"${PIP[@]}" torch  # the CPU wheel (constraints.txt); its own dependencies come with it
"${PIP[@]}" --no-deps "nvidia-modelopt==0.47.0"
"${PIP[@]}" --no-deps -r benchmarks/modelopt-requirements.txt
"$VENV/bin/python" -c "import modelopt, modelopt.onnx.quantization; print('nvidia-modelopt', modelopt.__version__)"
