#!/usr/bin/env bash
# Build the Python UDFs into a WebAssembly component:
#   examples/udfs/python-udfs/build.sh [OUT.wasm]     (default: ./python_udfs.wasm)
# Needs componentize-py (`pip install componentize-py`; set COMPONENTIZE_PY to
# use another one) and pip to fetch the flatbuffers package into .deps/ (PIP).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="$(realpath -m "${1:-$here/python_udfs.wasm}")"
componentize="${COMPONENTIZE_PY:-componentize-py}"
pip="${PIP:-python3 -m pip}"
deps="${PYTHON_UDF_DEPS:-$here/.deps}"
if [ ! -d "$deps/flatbuffers" ]; then
  $pip install --quiet --target "$deps" "flatbuffers==25.12.19"
fi
cd "$here"
"$componentize" --wit-path ../../../wit --world ignis:udf/udf componentize app \
  --python-path . --python-path "$deps" --output "$out" >/dev/null
echo "built $out"
