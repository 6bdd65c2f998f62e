#!/usr/bin/env bash
# Study v3 (docs/study-pythia-14m-v3/README.md): every compare invocation, in order. Run it from a clone at a fixed
# commit with its own virtual environment, in the background:
#   nohup docs/study-pythia-14m-v3/run.sh pilot > study-v3-pilot.log 2>&1 &
# Rerunning a part resumes it: finished runs are skipped, an interrupted one resumes from its last checkpoint.
set -uo pipefail
cd "$(dirname "$0")/../.."  # the project root
S=docs/study-pythia-14m-v3
part=${1:?"usage: run.sh pilot"}
# the verdict and selection halves of val.txt (split_val.py; derived, git-ignored, never committed)
[ -f $S/data/val-selection.txt ] || python $S/split_val.py ../shared/data/tinystories/val.txt $S/data || exit 1
common=(--train_path ../shared/data/tinystories-train-909k
        --val_path $S/data/val-verdict.txt $S/data/val-selection.txt docs/study-pythia-14m/ood/apache-2.0.txt
        --tokenizer_dir ../shared/tokenizers/pythia --max_tokens 909312 --max_seq_length 512 --precision 32-true
        --eval_interval 22 --decode_dtype float32 --context_length 256 --decode_batch_size 1 --paired true)
case $part in
  # 1. pilot: MHA and MLA at study v2's best rate (8e-3), 2 paired seeds each: how strongly do paired runs
  # correlate, and so how many seeds bring the 95% half-width of MLA - MHA to 0.02 nats?
  pilot)
    litgpt-mka compare --configs config_hub/pretrain/pythia-14m-{mha,mla}.yaml --seeds 1 2 "${common[@]}" \
      --pretrain_args '["--config=docs/study-pythia-14m-v2/configs/optimizer-lr-0.008.yaml"]' --out_dir $S/pilot ;;
  *) echo "unknown part: $part (allowed: pilot)"; exit 2 ;;
esac
