#!/usr/bin/env bash
# The GPU check, prepared to run once: every check that needs CUDA, each writing into OUT_DIR.
#
#   benchmarks/gpu.sh OUT_DIR
#
# Needs a CUDA build of torch with lightning; litgpt and this package either installed (`pip install -e
# ".[test]"`) or carried as wheels (WHEELS=DIR, made here by benchmarks/gpu_wheels.sh, installed first with
# pip --no-index --no-deps when litgpt or litgpt-mka is not installed). Writes into OUT_DIR:
#   environment.txt               date, commit, torch/CUDA/litgpt versions, nvidia-smi
#   tests.txt                     pytest on tests/attention (the CUDA flash-dispatch tests and the bf16
#                                 cached-decode tests run on the GPU there; the rest on the CPU)
#   decode-<size>-cuda-bf16.md    benchmarks/decode.py --device cuda --dtype bfloat16, one per size, with the
#                                 quantized-cache rows of KV_QUANTIZATIONS (bf16 cache; int8 and float8 rows)
#   decode-<size>-cuda-bf16.log   its progress lines (stderr)
#   pretrain-<preset>.log         `litgpt pretrain` of PRETRAIN_PRESET in bf16-mixed with --devices auto (litgpt's
#                                 FSDP with two or more GPUs, one device otherwise): half the tokens, then resumed
#                                 with --resume auto to all of them, then `litgpt generate` from final/
#   study-<size>/                 a study slice: `litgpt-mka compare` of the <size> presets (first of SIZES),
#                                 one seed, SLICE_TOKENS each, bf16-mixed: report.md, results.json/csv, plots
# A failed step does not stop the next; the exit status is 1 if any step failed.
#
# Environment (defaults in brackets):
#   SIZES           Pythia sizes to benchmark ["70m"], e.g. "70m 160m"
#   BENCH_ARGS      more decode.py options [none], e.g. "--rounds 7"
#   KV_QUANTIZATIONS  decode.py --kv_cache_quantizations ["int8 float8_e4m3fn"]; "" for none
#   DEVICE          [cuda]; "cpu" runs the same steps on the CPU, only to check this script
#   TESTS           pytest selection ["tests/attention -m 'not slow'"]
#   STEPS           which steps run ["tests decode pretrain study"]
#   DATA_DIR        train.txt / val.txt [../shared/data/tinystories]; TOKENIZER_DIR [../shared/tokenizers/pythia]
#   PRETRAIN_PRESET [pythia-<size>-mla]; PRETRAIN_TOKENS [204800: 50 steps of the presets' 8 x 512 tokens]
#   SLICE_TOKENS    [2048000: 500 steps]; SLICE_SEEDS ["1"]; SLICE_VARIANTS ["mha gqa mqa mla mka fmka"]
#   WHEELS          a folder of wheels to install first [none]; PYTHON [python3]
#
# On the device machine of this project (torch and lightning there, no litgpt, no registry), from the repo root
# here: `benchmarks/gpu_wheels.sh && mkdir -p .gpu-data && cp -r ../shared/data/tinystories
# ../shared/tokenizers/pythia .gpu-data/` (both folders are ignored by git), then run with carry [".whl",
# ".gpu-data"]:
#   WHEELS=.whl DATA_DIR=.gpu-data/tinystories TOKENIZER_DIR=.gpu-data/pythia benchmarks/gpu.sh gpu-out;
#   tar czf $OUT/gpu-out.tgz gpu-out
# Time on one H200 (estimated, not yet run there): about 1 minute of tests, 1-2 minutes per decode size,
# 1 minute of pretraining, 3-4 minutes for the study slice.
set -uo pipefail

out=${1:?usage: benchmarks/gpu.sh OUT_DIR}
device=${DEVICE:-cuda}
sizes=${SIZES:-70m}
bench_args=${BENCH_ARGS:-}
kv_quantizations=${KV_QUANTIZATIONS-"int8 float8_e4m3fn"}
tests=${TESTS:-"tests/attention -m 'not slow'"}
steps=${STEPS:-"tests decode pretrain study"}
python=${PYTHON:-python3}
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
mkdir -p "$out"
out=$(cd "$out" && pwd)
cd "$root"
data_dir=${DATA_DIR:-../shared/data/tinystories}
tokenizer_dir=${TOKENIZER_DIR:-../shared/tokenizers/pythia}
first_size=${sizes%% *}
preset=${PRETRAIN_PRESET:-pythia-$first_size-mla}
pretrain_tokens=${PRETRAIN_TOKENS:-204800}
slice_tokens=${SLICE_TOKENS:-2048000}
slice_seeds=${SLICE_SEEDS:-1}
slice_variants=${SLICE_VARIANTS:-"mha gqa mqa mla mka fmka"}
precision=bf16-mixed
[ "$device" = cpu ] && precision=32-true

installed() { "$python" -c "import importlib.metadata as m; m.version('litgpt'); m.version('litgpt-mka')" 2>/dev/null; }
if [ -n "${WHEELS:-}" ] && ! installed; then
    echo "gpu.sh: installing the wheels in $WHEELS" >&2
    "$python" -m pip install -q --no-index --no-deps --no-cache-dir "$WHEELS"/*.whl || exit 2
fi
if ! "$python" -c "import litgpt_mka, torch, sys; sys.exit(0 if '$device' == 'cpu' or torch.cuda.is_available() else 3)"; then
    echo "gpu.sh: no CUDA device visible to torch (or litgpt_mka is not installed); DEVICE=cpu checks the script" >&2
    exit 2
fi

status=0
fail() { status=1; echo "gpu.sh: $1" >&2; }
wants() { [[ " $steps " == *" $1 "* ]]; }
{
    date -u
    if commit=$(git rev-parse HEAD 2>/dev/null); then
        echo "commit $commit$(git diff --quiet HEAD || echo ' plus uncommitted changes')"
    else
        echo "commit unknown (not a git checkout)"
    fi
    "$python" -c "import torch, litgpt, importlib.metadata as m; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'litgpt', m.version('litgpt'))"
    nvidia-smi 2>&1 || echo "nvidia-smi unavailable"
} > "$out/environment.txt"

if wants tests; then
    echo "gpu.sh: tests ($tests) -> $out/tests.txt" >&2
    eval "\"$python\" -m pytest -q -rs $tests" > "$out/tests.txt" 2>&1 || fail "tests failed"
    tail -n 3 "$out/tests.txt" >&2
fi

if wants decode; then
    for size in $sizes; do
        name="decode-$size-$device-bf16"
        echo "gpu.sh: benchmark pythia-$size -> $out/$name.md" >&2
        # shellcheck disable=SC2086  # BENCH_ARGS is a list of options
        "$python" benchmarks/decode.py --device "$device" --dtype bfloat16 --size "$size" $bench_args \
            ${kv_quantizations:+--kv_cache_quantizations $kv_quantizations} \
            --out "$out/$name.md" > /dev/null 2> "$out/$name.log" || fail "$name failed, see $name.log"
    done
fi

data_args=(--data litgpt_mka.data.TextCorpus --data.train_path "$data_dir/train.txt"
           --data.val_path "$data_dir/val.txt" --tokenizer_dir "$tokenizer_dir")

if wants pretrain; then
    # litgpt's own commands, unchanged: train half the tokens, then resume from that checkpoint (--resume auto)
    # to the whole budget, then generate from final/. (litgpt 0.5.13 stops on max_tokens, not on max_steps.)
    log="$out/pretrain-$preset.log"
    run_dir=$(mktemp -d)/$preset
    echo "gpu.sh: litgpt pretrain $preset ($precision, devices auto) -> $log" >&2
    pretrain=("$python" -m litgpt pretrain --config "config_hub/pretrain/$preset.yaml" "${data_args[@]}"
              --precision "$precision" --devices auto --train.save_interval 25 --eval.interval 25 --out_dir "$run_dir")
    {
        "${pretrain[@]}" --train.max_tokens $((pretrain_tokens / 2)) \
            && "${pretrain[@]}" --train.max_tokens "$pretrain_tokens" --resume auto \
            && "$python" -m litgpt generate "$run_dir/final" --prompt "Once upon a time" --max_new_tokens 40
    } > "$log" 2>&1 || fail "pretrain of $preset failed, see $(basename "$log")"
    grep -E "Resuming|Total parameters|Training time|Memory used|Once upon" "$log" >&2
fi

if wants study; then
    slice="$out/study-$first_size"
    steps_per_run=$((slice_tokens / 4096))  # the presets' batch: 8 sequences of 512
    eval_interval=$((steps_per_run >= 8 ? steps_per_run / 8 : 1))  # at least 8 curve points where possible
    configs=()
    for variant in $slice_variants; do configs+=("config_hub/pretrain/pythia-$first_size-$variant.yaml"); done
    echo "gpu.sh: study slice, pythia-$first_size $slice_variants, seeds $slice_seeds -> $slice" >&2
    # shellcheck disable=SC2086  # SLICE_SEEDS is a list of seeds
    "$python" -m litgpt_mka.cli compare --configs "${configs[@]}" --seeds $slice_seeds --train_path "$data_dir/train.txt" --val_path "$data_dir/val.txt" \
        --tokenizer_dir "$tokenizer_dir" --max_tokens "$slice_tokens" --max_seq_length 512 \
        --precision "$precision" --eval_interval "$eval_interval" --decode_dtype bfloat16 \
        --out_dir "$slice" > "$out/study-$first_size.log" 2>&1 || fail "study slice failed, see study-$first_size.log"
    rm -rf "$slice/runs"
fi

ls -l "$out" >&2
exit $status
