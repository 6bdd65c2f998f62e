#!/usr/bin/env bash
# Wheels for a GPU machine that has torch and lightning but no litgpt and no package index (the device
# machine of this project: Python 3.12, torch 2.11 + CUDA). Run here, where pip reaches the registry:
#
#   benchmarks/gpu_wheels.sh [WHEEL_DIR]        # default: .whl (ignored by git)
#
# It fetches the packages that machine lacks, at the versions this project is tested with (litgpt 0.5.13 and
# the jsonargparse litgpt's CLI needs; huggingface_hub because litgpt 0.5.13 requires < 1.4 and that image
# has a newer one), all pure-Python, with --no-deps (the rest is already there), and builds this project's own
# wheel (which carries the .pth file that switches the plugin on inside `litgpt` commands). There, before
# anything else:
#
#   python3 -m pip install -q --no-index --no-deps --no-cache-dir WHEEL_DIR/*.whl
#
# benchmarks/gpu.sh does exactly that when WHEELS=WHEEL_DIR is set and litgpt or litgpt-mka is not installed.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
dir=${1:-$root/.whl}
mkdir -p "$dir"
rm -f "$dir"/*.whl

# Versions as in this project's tested environment (`pip freeze` of a fresh `pip install -e .`).
packages=(litgpt==0.5.13 jsonargparse==4.41.0 docstring_parser==0.18.0 typeshed_client==2.15.0
          huggingface_hub==1.3.7)
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$dir" "${packages[@]}"
python3 -m pip wheel -q --no-deps -w "$dir" "$root"
ls -l "$dir"
