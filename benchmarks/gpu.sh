#!/usr/bin/env bash
# The GPU check, prepared to run once: the tests that use CUDA, then the decode benchmark in bf16.
#
#   benchmarks/gpu.sh OUT_DIR
#
# Run from anywhere, in an environment with a CUDA build of torch and this package installed
# (`pip install -e ".[test]"`). Writes into OUT_DIR:
#   environment.txt               date, commit, torch/CUDA/litgpt versions, nvidia-smi
#   tests.txt                     pytest on tests/attention (the CUDA flash-dispatch tests and the bf16
#                                 cached-decode tests run on the GPU there; the rest on the CPU)
#   decode-<size>-cuda-bf16.md    benchmarks/decode.py --device cuda --dtype bfloat16, one per size
#   decode-<size>-cuda-bf16.log   its progress lines (stderr)
# A test failure does not stop the benchmark; the exit status is 1 if a step failed.
#
# Environment (defaults in brackets):
#   SIZES       Pythia sizes to benchmark ["70m"], e.g. "70m 160m"
#   BENCH_ARGS  more decode.py options [none], e.g. "--rounds 7"
#   DEVICE      [cuda]; "cpu" runs the same steps on the CPU, only to check this script
#   TESTS       pytest selection ["tests/attention -m 'not slow'"]
# Time on one H200: about 1 minute of tests and 1-2 minutes per size.
set -uo pipefail

out=${1:?usage: benchmarks/gpu.sh OUT_DIR}
device=${DEVICE:-cuda}
sizes=${SIZES:-70m}
bench_args=${BENCH_ARGS:-}
tests=${TESTS:-"tests/attention -m 'not slow'"}
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
mkdir -p "$out"
out=$(cd "$out" && pwd)
cd "$root"

if ! python -c "import litgpt_mka, torch, sys; sys.exit(0 if '$device' == 'cpu' or torch.cuda.is_available() else 3)"; then
    echo "gpu.sh: no CUDA device visible to torch (or litgpt_mka is not installed); DEVICE=cpu checks the script" >&2
    exit 2
fi

status=0
{
    date -u
    if commit=$(git rev-parse HEAD 2>/dev/null); then
        echo "commit $commit$(git diff --quiet HEAD || echo ' plus uncommitted changes')"
    else
        echo "commit unknown (not a git checkout)"
    fi
    python -c "import torch, litgpt, importlib.metadata as m; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'litgpt', m.version('litgpt'))"
    nvidia-smi 2>&1 || echo "nvidia-smi unavailable"
} > "$out/environment.txt"

echo "gpu.sh: tests ($tests) -> $out/tests.txt" >&2
eval "python -m pytest -q -rs $tests" > "$out/tests.txt" 2>&1 || { status=1; echo "gpu.sh: tests failed" >&2; }
tail -n 3 "$out/tests.txt" >&2

for size in $sizes; do
    name="decode-$size-$device-bf16"
    echo "gpu.sh: benchmark pythia-$size -> $out/$name.md" >&2
    # shellcheck disable=SC2086  # BENCH_ARGS is a list of options
    python benchmarks/decode.py --device "$device" --dtype bfloat16 --size "$size" $bench_args \
        --out "$out/$name.md" > /dev/null 2> "$out/$name.log" || { status=1; echo "gpu.sh: $name failed, see $name.log" >&2; }
done

ls -l "$out" >&2
exit $status
