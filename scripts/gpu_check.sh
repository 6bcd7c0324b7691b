#!/usr/bin/env bash
# The CUDA checks and the llama.cpp check, on a machine with a GPU and no network (run from the repo root).
#   .whl/ holds what that machine lacks: transformers==5.23.0, gguf, diskcache wheels and the
#   llama-cpp-python sdist (built here on the CPU: GGML_NATIVE=OFF, all cores).
set -euo pipefail
site=/tmp/site
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .whl/*.whl
export PYTHONPATH="$site:$PWD:$PWD/tests" PYTHONUNBUFFERED=1
if ls .whl/llama_cpp_python-*.tar.gz >/dev/null 2>&1; then
    start=$(date +%s)
    CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_CUDA=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF" \
    CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) \
        python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-cache-dir --target "$site" \
        .whl/llama_cpp_python-*.tar.gz
    echo "[gpu_check] llama-cpp-python built in $(( $(date +%s) - start )) s"
fi
python3 -c "import torch, transformers; print('[gpu_check] torch', torch.__version__, 'transformers', transformers.__version__, torch.cuda.get_device_name())"
python3 -m pytest -q -p no:cacheprovider -rs tests/gpu tests/export/test_llama_cpp.py "$@"
