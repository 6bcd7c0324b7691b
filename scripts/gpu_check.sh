#!/usr/bin/env bash
# The CUDA checks and the llama.cpp checks, on a machine with a GPU and no network (run from the repo root).
#   .whl/ holds what that machine lacks: transformers==5.23.0, gguf, diskcache and liger-kernel wheels and a
#   llama-cpp-python sdist (its vendored llama.cpp is built twice on the CPU, GGML_NATIVE=OFF, all cores:
#   as the Python bindings, and as libllama for scripts/llama_cpp_logits.cpp).
#   Extra arguments go to pytest.
set -euo pipefail
site=/tmp/site
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .whl/*.whl
export PYTHONPATH="$site:$PWD:$PWD/tests" PYTHONUNBUFFERED=1
sdist=$(ls .whl/llama_cpp_python-*.tar.gz 2>/dev/null | head -1 || true)
if [ -n "$sdist" ]; then
    start=$(date +%s)
    CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_CUDA=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF" \
    CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) \
        python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-cache-dir --target "$site" "$sdist"
    mkdir -p /tmp/src && tar xzf "$sdist" -C /tmp/src
    llama=$(ls -d /tmp/src/llama_cpp_python-*/vendor/llama.cpp)
    cmake -S "$llama" -B /tmp/lb -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=OFF -DLLAMA_CURL=OFF \
        -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF \
        -DLLAMA_BUILD_SERVER=OFF >/tmp/cmake.log 2>&1 || { tail -30 /tmp/cmake.log; exit 1; }
    cmake --build /tmp/lb -j"$(nproc)" --target llama >/tmp/build.log 2>&1 || { tail -30 /tmp/build.log; exit 1; }
    lib=$(dirname "$(find /tmp/lb -name 'libllama.so' | head -1)")
    g++ -O2 -std=c++17 scripts/llama_cpp_logits.cpp -I"$llama/include" -I"$llama/ggml/include" \
        -L"$lib" -lllama -lggml -lggml-base -Wl,-rpath,"$lib" -o /tmp/llama_cpp_logits
    export KDISTILL_LLAMA_CPP_LOGITS=/tmp/llama_cpp_logits
    echo "[gpu_check] $(basename "$sdist"): bindings and libllama built in $(( $(date +%s) - start )) s"
fi
python3 -c "import torch, transformers; print('[gpu_check] torch', torch.__version__, 'transformers', transformers.__version__, torch.cuda.get_device_name())"
python3 -m pytest -q -p no:cacheprovider -rs tests/gpu "tests/export/test_llama_cpp.py" -k "not python" "$@"
# the bindings in a process of their own: a crash there must not hide the results above
if ! python3 -m pytest -q -p no:cacheprovider -rs "tests/export/test_llama_cpp.py" -k python "$@"; then
    # seen on that machine: libllama's std::ostream calls bound to a copy inside libggml.so and crashed
    echo "[gpu_check] llama-cpp-python failed; again with the system libstdc++ loaded first"
    LD_PRELOAD="$(g++ -print-file-name=libstdc++.so.6)" \
        python3 -m pytest -q -p no:cacheprovider -rs "tests/export/test_llama_cpp.py" -k python "$@" || true
fi
# the fused loss at Liger-Kernel's published shape (8192 x 4096 -> 128,256, bf16, JSD), beside Liger if it imports
python3 -m kdistill.commands.bench_cuda --repeat 10 || echo "[gpu_check] bench_cuda failed"
