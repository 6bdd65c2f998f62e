#!/usr/bin/env bash
# Study v2 with its quantized-cache decodes taking turns (docs/study-pythia-14m-v2/README.md): keeps the study of
# the clone $1 running (its run.sh, its own venv) and, whenever a run has finished without kv_quantization.json,
# stops the study (SIGTERM: it resumes from its last checkpoint), runs kv_quantization.sh with this checkout's
# environment (active when this starts), and starts the study again. Ends when run.sh says the study is complete.
#   source .venv/bin/activate && nohup docs/study-pythia-14m-v2/run_with_kv.sh ../study-v2 > kv.log 2>&1 &
set -uo pipefail
study=$(cd "${1:?usage: run_with_kv.sh <the study clone>}" && pwd)
here=$(cd "$(dirname "$0")" && pwd)
log="$study/study-v2.log"

start_study() { (cd "$study" && source .venv/bin/activate && setsid nohup docs/study-pythia-14m-v2/run.sh >> "$log" 2>&1 < /dev/null &); }
study_running() { pgrep -f "$study/.venv/bin/litgpt-mka compare" > /dev/null || pgrep -f "study-pythia-14m-v2/run.sh" > /dev/null; }
pending() {
  for run in "$study"/docs/study-pythia-14m-v2/{main,ablation}/runs/*/; do  # as kv_quantization.sh
    [ -f "$run/result.json" ] && [ ! -f "$run/kv_quantization.json" ] && return 0
  done
  return 1
}

study_running || start_study
while true; do
  if pending; then
    pkill -TERM -f "$study/.venv/bin/litgpt-mka compare"
    while study_running; do sleep 2; done
    echo "$(date -u +%FT%TZ) study stopped for the quantized-cache decodes"
    "$here/kv_quantization.sh" "$study" || exit 1
    tail -n 1 "$log" | grep -q "study v2 complete" && exit 0
    start_study
  elif ! study_running; then
    tail -n 1 "$log" | grep -q "study v2 complete" && exit 0
    echo "$(date -u +%FT%TZ) the study stopped on its own (see $log)"; exit 1
  fi
  sleep 20
done
