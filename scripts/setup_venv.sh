#!/usr/bin/env bash
# Create or update the project's virtual environment.
# On machines without an NVIDIA GPU, torch is pinned to the CPU wheel (a CUDA build is
# several GB); elsewhere the GPU machine's own torch build is kept.
set -euo pipefail
venv=${1:-.venv}
python=${PYTHON:-python3}
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
pip="$venv/bin/python -m pip"
$pip install -q --upgrade pip setuptools wheel
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  $pip install -q -e ".[dev]"
else
  $pip install -q torch==2.13.0
  $pip install -q -c constraints-cpu.txt -e ".[dev]"
fi
