#!/usr/bin/env bash
# The GPU check, prepared to run once, in stages ordered by what they tell (stage 1 first), each within
# STAGE_SECONDS (180) on one H100/H200 and writing its tables row by row, so a run cut off anywhere still
# returns every table it finished.
#
#   benchmarks/gpu.sh OUT_DIR
#
# Stages (STAGES selects any subset, in any order given; default "1 2 3"):
#   1  what runs, and is it right:
#      - versions: date, commit, python/torch/CUDA/cuDNN/litgpt/lightning, the GPU, SDPA switches
#      - backends: the SDPA kernel every attention call site reaches, per variant (mha gqa mqa mla mka fmka at the
#        SIZE presets in DTYPE): training forward, cached prefill, decode step over the whole cache (litgpt
#        generate's), decode with rows at different positions ((B, 1) input_pos), decode without input_pos_maxp1
#        (litgpt batched_generate_fn's), int8-cache decode; read from torch.profiler op names
#        (benchmarks/gpu_checks.py backends)
#      - correctness: pytest TESTS (tests/attention/test_bf16_decode.py: bf16 cached decode of every variant
#        against the full forward, with the quantized caches it covers; its CUDA cases run on the GPU)
#      - fsdp: torch FSDP2 fully_shard per Block on one GPU (world size 1, NCCL), a few AdamW steps of every
#        preset in DTYPE, the losses against the unsharded model (gpu_checks.py fsdp)
#   2  decode speed:
#      - decode-speed: tokens/s of the default SDPA policy against each backend forced (flash, cudnn, efficient,
#        math), every variant, unquantized and int8 cache (gpu_checks.py decode-speed)
#      - decode-growth: 512 decode steps in one run with the default policy and with cuDNN forced: step time
#        percentiles and memory growth (where a cuDNN plan per sequence length would show) (gpu_checks.py)
#      - decode: benchmarks/decode.py in DTYPE, reduced grid (BENCH_ARGS), with its quantized-cache rows
#   3  litgpt's own commands: `litgpt pretrain` of PRETRAIN_PRESET, half of PRETRAIN_TOKENS, then `--resume auto`
#      to all of them, then `litgpt generate` from final/ (bf16-mixed; 32-true on the CPU)
#
# Writes into OUT_DIR (6 files, under the device machine's limit of 8 returned files): stageN.md, the
# tables of stage N (with a line per step: its seconds, and why it stopped if it did), and stageN.log, the full
# output of its steps. A step that would start after its stage's STAGE_SECONDS is skipped, one still running
# then is stopped (`timeout`); both are noted in stageN.md, and the next stage runs. A failed step does not stop
# the next; the exit status is 1 if any step failed or was stopped.
#
# Environment (defaults in brackets):
#   STAGES          ["1 2 3"]; STAGE_SECONDS [180]
#   DEVICE          [cuda]; "cpu" runs every step on the CPU, only to check this script
#   SIZE [70m]; DTYPE [bfloat16]: the presets and dtype of stages 1 and 2
#   TESTS           pytest selection [tests/attention/test_bf16_decode.py -n 0]
#   BACKENDS_ARGS, FSDP_ARGS, SPEED_ARGS, GROWTH_ARGS: more options of those gpu_checks.py subcommands [none]
#   BENCH_ARGS      decode.py options ["--contexts 1024 --batch_sizes 1 --cache_dominated 16x4096
#                   --kv_cache_quantizations int8 float8_e4m3fn"]; "skip" leaves decode.py out
#   PRETRAIN_PRESET [pythia-$SIZE-mla]; PRETRAIN_TOKENS [204800: 50 steps of the presets' 8 x 512 tokens];
#   PRETRAIN_ARGS   more `litgpt pretrain` options [none]
#   DATA_DIR        train.txt / val.txt [../shared/data/tinystories]; TOKENIZER_DIR [../shared/tokenizers/pythia]
#   WHEELS          a folder of wheels to install first [none]; PYTHON [python3]
#
# On the device machine of this project (torch and lightning there, no litgpt, no registry), from the repo root
# here: `benchmarks/gpu_wheels.sh && mkdir -p .gpu-data && cp -r ../shared/data/tinystories
# ../shared/tokenizers/pythia .gpu-data/` (both folders are ignored by git), then run with carry [".whl",
# ".gpu-data"] and timeout_s 600, writing straight into $OUT (so a cut-off run still returns its tables):
#   WHEELS=.whl DATA_DIR=.gpu-data/tinystories TOKENIZER_DIR=.gpu-data/pythia benchmarks/gpu.sh $OUT
#
# Time per stage. CPU: measured, `DEVICE=cpu` with the tiny settings of tests/benchmarks/test_gpu_sh.py (14m
# presets, fp32, a few tokens per step, decode.py skipped) on this project's 2-core CPU while 4 other sessions
# shared it (1-minute load 6-13): nearly all of it is Python starting (torch + litgpt imports, about 28 s each
# under that load), so these bound the script's own overhead, not the GPU's work. GPU: an ESTIMATE for one
# H100/H200 at the defaults (70m, bf16), not measured (no GPU has run this script yet), reasoned from FLOPs,
# bytes and per-call overheads:
#   stage 1: CPU 165 s (versions check 28, backends 56, correctness 31, fsdp 50 with 1 preset). GPU estimate
#            about 80 s: 4 Python starts with torch + litgpt + CUDA (about 8 s each); backends: 12 model builds
#            (6 presets, unquantized and int8; 70M bf16 parameters initialised on the GPU, well under 1 s each)
#            and 36 profiled calls of at most 2 x 512 tokens (milliseconds of compute; the profiler's start and
#            each first kernel load dominate), about 15 s; pytest of test_bf16_decode.py on CPU and GPU: tiny
#            models, about 20 s; fsdp: the NCCL start and 6 presets x 2 x 3 AdamW steps of 4 x 512 tokens
#            (6 x 70M x 2048 x 3 = 2.6 TFLOP a preset: milliseconds at bf16 rates), about 15 s.
#   stage 2: CPU 82 s (decode-speed 38, decode-growth 44; decode.py skipped). GPU estimate about 140 s:
#            decode-speed 12 rows (6 presets, unquantized and int8) x 5 policies x (a one-row prefill of 1024
#            tokens + 68 steps at batch 8): a 70m decode step is bound by kernel launches and Python (6 layers x
#            20-50 ops at 20-50 us: 3-10 ms), about 4100 steps x 5 ms = 20 s; decode-growth 6 presets x 2
#            policies x 513 steps x 5 ms = 30 s, more where a cuDNN plan per length makes steps slow (each run
#            stops after 20 s: at most 6 x 20 s for cuDNN); decode.py's grid (22 rows x 4 settings x 5 rounds x
#            18 steps = 7920 steps x 5 ms, about 40 s; its batch 16 x 4096 caches, 22 rows, hold 3.4 GiB at
#            most); 3 Python starts, 25 s.
#   stage 3: CPU 178 s (pretrain 65, resume 60, generate 53, a few steps of 2 x 32 tokens each). GPU estimate
#            about 80 s: 3 litgpt starts (about 10-15 s each), 50 steps of 8 x 512 tokens of a 70m model (6 x
#            70M x 4096 = 1.7 TFLOP a step: about 5-10 ms at bf16 rates), 2 validations of 100 batches, and 3
#            checkpoint saves (weights + AdamW state, about 0.8 GiB each).
#   Whole run: about 5 minutes by the estimates; 9 at most, since each stage stops at STAGE_SECONDS.
set -uo pipefail

out=${1:?usage: benchmarks/gpu.sh OUT_DIR}
stages=${STAGES:-"1 2 3"}
stage_seconds=${STAGE_SECONDS:-180}
device=${DEVICE:-cuda}
size=${SIZE:-70m}
dtype=${DTYPE:-bfloat16}
tests=${TESTS:-"tests/attention/test_bf16_decode.py -n 0"}
bench_args=${BENCH_ARGS:-"--contexts 1024 --batch_sizes 1 --cache_dominated 16x4096 --kv_cache_quantizations int8 float8_e4m3fn"}
python=${PYTHON:-python3}
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
mkdir -p "$out"
out=$(cd "$out" && pwd)
cd "$root"
data_dir=${DATA_DIR:-../shared/data/tinystories}
tokenizer_dir=${TOKENIZER_DIR:-../shared/tokenizers/pythia}
preset=${PRETRAIN_PRESET:-pythia-$size-mla}
pretrain_tokens=${PRETRAIN_TOKENS:-204800}
precision=bf16-mixed
[ "$device" = cpu ] && precision=32-true
export PYTHONUNBUFFERED=1
for wanted in $stages; do
    [[ $wanted == [123] ]] || { echo "gpu.sh: STAGES has $wanted; the stages are 1, 2 and 3" >&2; exit 2; }
done

installed() { "$python" -c "import importlib.metadata as m; m.version('litgpt'); m.version('litgpt-mka')" 2>/dev/null; }
if [ -n "${WHEELS:-}" ] && ! installed; then
    echo "gpu.sh: installing the wheels in $WHEELS" >&2
    "$python" -m pip install -q --no-index --no-deps --no-cache-dir "$WHEELS"/*.whl || exit 2
fi
# the versions (stage 1's first table) and the check that the device is there, in one Python start
versions=$(mktemp)
started=$SECONDS
if ! "$python" benchmarks/gpu_checks.py versions --device "$device" --require_device --out "$versions" > /dev/null; then
    echo "gpu.sh: no CUDA device visible to torch (or litgpt_mka is not installed); DEVICE=cpu checks the script" >&2
    exit 2
fi
versions_seconds=$((SECONDS - started))

status=0
stage=0 stage_end=0 md=/dev/null log=/dev/null
note() { printf -- '- %s\n\n' "$1" >> "$md"; echo "gpu.sh: stage $stage: $1" >&2; }

begin_stage() {  # begin_stage N TITLE: the stage's files and its deadline
    stage=$1 stage_end=$((SECONDS + stage_seconds)) md="$out/stage$1.md" log="$out/stage$1.log"
    printf '# Stage %s: %s\n\n`DEVICE=%s SIZE=%s DTYPE=%s`, %s\n\n' "$1" "$2" "$device" "$size" "$dtype" \
        "$(date -u '+%Y-%m-%d %H:%M UTC')" > "$md"
    : > "$log"
}

step() {  # step NAME COMMAND...: runs COMMAND in what is left of the stage's time, its output into the log
    local name=$1 left=$((stage_end - SECONDS)) started=$SECONDS rc
    shift
    if ((left <= 0)); then
        status=1
        note "step \`$name\` skipped: stage $stage's $stage_seconds s were used up"
        return 1
    fi
    echo "== $name: $*" >> "$log"
    timeout -k 5 "$left" "$@" >> "$log" 2>&1
    rc=$?
    if ((rc == 124 || rc == 137)); then
        status=1
        note "step \`$name\` STOPPED at the stage's limit after $((SECONDS - started)) s; its table may be partial"
    elif ((rc != 0)); then
        status=1
        note "step \`$name\` FAILED (exit $rc) after $((SECONDS - started)) s, see stage$stage.log"
    else
        note "step \`$name\`: $((SECONDS - started)) s"
    fi
    return "$rc"
}

checks() {  # checks NAME SUBCOMMAND EXTRA_ARGS: a gpu_checks.py subcommand appending its section to the stage's md
    local name=$1 command=$2 extra=$3
    # shellcheck disable=SC2086  # EXTRA_ARGS is a list of options
    step "$name" "$python" benchmarks/gpu_checks.py "$command" --device "$device" --size "$size" --dtype "$dtype" \
        --out "$md" $extra
}

stage_1() {
    begin_stage 1 "versions, SDPA kernel per call site, bf16 and quantized correctness, one-GPU FSDP"
    {
        if commit=$(git rev-parse HEAD 2>/dev/null); then
            echo "- commit $commit$(git diff --quiet HEAD || echo ' plus uncommitted changes')"
        else
            echo "- commit unknown (not a git checkout)"
        fi
        nvidia-smi -L 2>/dev/null | sed 's/^/- /'
        echo
    } >> "$md"
    nvidia-smi >> "$log" 2>&1 || echo "nvidia-smi unavailable" >> "$log"
    cat "$versions" >> "$md"
    note "step \`versions\`: $versions_seconds s (before the stages)"
    checks backends backends "${BACKENDS_ARGS:-}"
    local selection
    eval "selection=($tests)"
    step correctness "$python" -m pytest -q -rfEs -p no:cacheprovider "${selection[@]}"
    { echo; echo "## Correctness: pytest $tests"; echo; echo '```'
      grep -E "^(FAILED|ERROR|SKIPPED)|[0-9]+ (passed|failed|skipped|error)" "$log" | tail -n 40; echo '```'; echo
    } >> "$md"
    checks fsdp fsdp "${FSDP_ARGS:-}"
}

stage_2() {
    begin_stage 2 "decode speed by SDPA policy, memory and step times over 512 steps, decode benchmark"
    checks decode-speed decode-speed "${SPEED_ARGS:-}"
    checks decode-growth decode-growth "${GROWTH_ARGS:-}"
    if [ "$bench_args" != skip ]; then
        local report
        report=$(mktemp)
        # shellcheck disable=SC2086  # BENCH_ARGS is a list of options
        step decode "$python" benchmarks/decode.py --device "$device" --dtype "$dtype" --size "$size" $bench_args \
            --out "$report" && { echo; cat "$report"; } >> "$md"
        rm -f "$report"
    fi
}

stage_3() {
    begin_stage 3 "litgpt pretrain, --resume auto, litgpt generate of $preset"
    # litgpt's own commands, unchanged: train half the tokens, then resume from that checkpoint (--resume auto)
    # to the whole budget, then generate from final/. (litgpt 0.5.13 stops on max_tokens, not on max_steps.)
    local run_dir
    run_dir=$(mktemp -d)/$preset
    # shellcheck disable=SC2206  # PRETRAIN_ARGS is a list of options
    local pretrain=("$python" -m litgpt pretrain --config "config_hub/pretrain/$preset.yaml"
        --data litgpt_mka.data.TextCorpus --data.train_path "$data_dir/train.txt" --data.val_path "$data_dir/val.txt"
        --tokenizer_dir "$tokenizer_dir" --precision "$precision" --devices auto --train.save_interval 25
        --eval.interval 25 --out_dir "$run_dir" ${PRETRAIN_ARGS:-})
    step pretrain "${pretrain[@]}" --train.max_tokens $((pretrain_tokens / 2)) \
        && step resume "${pretrain[@]}" --train.max_tokens "$pretrain_tokens" --resume auto \
        && step generate "$python" -m litgpt generate "$run_dir/final" --prompt "Once upon a time" --max_new_tokens 40
    { echo; echo "## litgpt pretrain / resume / generate: $preset, $precision"; echo; echo '```'
      grep -E "^(Resuming|Total parameters|Final evaluation|Once upon|\| - (Total tokens|Training Time|Tok/sec|Memory Used))|Error" "$log"
      echo '```'
    } >> "$md"
    rm -rf "$(dirname "$run_dir")"
}

for wanted in $stages; do
    started=$SECONDS
    "stage_$wanted"
    echo "gpu.sh: stage $wanted: $((SECONDS - started)) s" >&2
done
rm -f "$versions"
ls -l "$out" >&2
exit $status
