#!/usr/bin/env bash
# Builds llama-cpp-python once per machine into a wheel cache, with CPU flags that avoid the
# AVX-512/AMX code paths: a native build segfaults on the first decode on these CPUs.
# Usage: scripts/build_llama_wheel.sh PYTHON WHEEL_DIR VERSION
set -euo pipefail
python=$1; wheel_dir=$2; version=$3
mkdir -p "$wheel_dir"
if ls "$wheel_dir"/llama_cpp_python-"$version"-*.whl >/dev/null 2>&1; then
  exit 0
fi
echo "Building llama-cpp-python $version once for this machine (about 6 minutes; cached in $wheel_dir)..."
export CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX512=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_TILE=OFF -DGGML_AVX512_VNNI=OFF -DGGML_AVX512_BF16=OFF -DGGML_AVX512_VBMI=OFF"
tmp=$(mktemp -d)
"$python" -m pip wheel --no-deps -w "$tmp" "llama-cpp-python==$version"
mv "$tmp"/llama_cpp_python-*.whl "$wheel_dir"/
rm -rf "$tmp"
