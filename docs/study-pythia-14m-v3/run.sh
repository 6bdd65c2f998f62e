#!/usr/bin/env bash
# Study v3 (docs/study-pythia-14m-v3/README.md): every compare invocation, in order. Run it from a clone at a fixed
# commit with its own virtual environment, in the background:
#   nohup docs/study-pythia-14m-v3/run.sh pilot > study-v3-pilot.log 2>&1 &
# Rerunning a part resumes it: finished runs are skipped, an interrupted one resumes from its last checkpoint.
set -uo pipefail
cd "$(dirname "$0")/../.."  # the project root
S=docs/study-pythia-14m-v3
part=${1:?"usage: run.sh pilot|sweep|tuned"}
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
  # 2. sweep: GQA, MQA and MKA over 4e-3, 8e-3 and 1.6e-2 (v2 swept MHA, MLA and FMKA: 8e-3, bracketed), 2 paired
  # seeds; each variant's rate chosen on val-selection, report.md flags a best at the grid's edge. Superseded by
  # `tuned`, which holds the same runs (its finished ones were copied into tuned/runs/: the same specs, so skipped)
  sweep)
    litgpt-mka compare --configs config_hub/pretrain/pythia-14m-{gqa,mqa,mka}.yaml --seeds 1 2 "${common[@]}" \
      --learning_rates 0.004 0.008 0.016 --selection_val val-selection --out_dir $S/sweep ;;
  # 2 and 3. tuned: the sweep above on seeds 1 and 2 (MHA, MLA and FMKA given v2's 8e-3), then seeds 3-6 of all six
  # at each one's chosen rate, seed by seed across the presets; verdicts on val-verdict over all six seeds
  tuned)
    litgpt-mka compare --configs config_hub/pretrain/pythia-14m-{mha,gqa,mqa,mla,mka,fmka}.yaml \
      --seeds 1 2 3 4 5 6 --selection_seeds 1 2 "${common[@]}" --learning_rates 0.004 0.008 0.016 \
      --config_learning_rates '{"pythia-14m-mha": [0.008], "pythia-14m-mla": [0.008], "pythia-14m-fmka": [0.008]}' \
      --selection_val val-selection --out_dir $S/tuned ;;
  *) echo "unknown part: $part (allowed: pilot, sweep, tuned)"; exit 2 ;;
esac
