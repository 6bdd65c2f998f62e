#!/usr/bin/env bash
# Study v2's quantized-cache losses (docs/study-pythia-14m-v2/README.md): every finished run of the study clone
# given as $1 that has no kv_quantization.json yet is decoded through int8, int4 and float8 caches by compare's
# worker (training nothing). Run it from a checkout of main (3c83aa7 or later) with its own environment while the
# study is stopped (beside a training run, both slow down: measured 3.5x slower training), then resume the study.
# The main study and the query ablation only: the learning-rate sweep trains the same architectures at other
# learning rates, and the quality table is per architecture at the study's learning rate.
set -uo pipefail
study=${1:?usage: kv_quantization.sh <the study clone>}
for run in "$study"/docs/study-pythia-14m-v2/{main,ablation}/runs/*/; do
  [ -f "$run/result.json" ] && [ ! -f "$run/kv_quantization.json" ] || continue
  echo "$(date -u +%FT%TZ) $run"
  python -m litgpt_mka.compare.worker kv_quantization "$run" \
    --quantizations int8,int4,float8_e4m3fn || exit 1
done
