#!/usr/bin/env bash
# Study v2 (docs/study-pythia-14m-v2/README.md): every compare invocation, in order. Run it from a clone at a
# fixed commit, in the background: nohup docs/study-pythia-14m-v2/run.sh > study-v2.log 2>&1 &
# Rerunning it resumes: finished runs are skipped, an interrupted one resumes from its last checkpoint.
set -uo pipefail
cd "$(dirname "$0")/../.."  # the project root
S=docs/study-pythia-14m-v2
common=(--train_path ../shared/data/tinystories-train-909k
        --val_path ../shared/data/tinystories/val.txt docs/study-pythia-14m/ood/apache-2.0.txt
        --tokenizer_dir ../shared/tokenizers/pythia --max_tokens 909312 --max_seq_length 512 --precision 32-true
        --eval_interval 22 --decode_dtype float32 --context_length 256 --decode_batch_size 1)
presets=(config_hub/pretrain/pythia-14m-{mha,gqa,mqa,mla,mka,fmka}.yaml)
# 1. main study, seeds outermost so that every variant has seed 1 before any has seed 2
for seeds in "1" "1 2" "1 2 3"; do
  litgpt-mka compare --configs "${presets[@]}" --seeds $seeds "${common[@]}" --out_dir $S/main || exit 1
done
# 2. query ablation: MHA and MLA runs are the main study's (same config, seed, data, budget): copied, not retrained
mkdir -p $S/ablation/runs
for v in mha mla; do for s in 1 2 3; do
  [ -d $S/ablation/runs/pythia-14m-$v-seed$s ] || cp -r $S/main/runs/pythia-14m-$v-seed$s $S/ablation/runs/
done; done
litgpt-mka compare --configs config_hub/pretrain/pythia-14m-{mha,mla}.yaml $S/configs/pythia-14m-mla-fullq.yaml \
  --seeds 1 2 3 "${common[@]}" --out_dir $S/ablation || exit 1
# 3. learning-rate fairness: more peak learning rates, warm-up unchanged, 2 seeds. 4e-3 was added (and 2e-3 moved
# first) on 2026-12-05, after MHA ended 0.38 nats worse at 5e-4 and 0.25 nats better at 2e-3 than at 1e-3; MHA's
# 5e-4 runs were done by then. 8e-3 was added the same day, before 5e-4, after MHA's first 4e-3 run ended 0.18 nats
# below 2e-3; 1.6e-2 likewise after MHA's first 8e-3 run ended 0.06 below its 4e-3 mean, and each rate's seeds
# made outermost (every variant's seed 1 at a rate before any seed 2: its first point says whether to go on).
# The order changes no run: each trains alone, from its seed, on the same data order.
for lr in 0.002 0.004 0.008 0.016 0.0005; do
  for seeds in "1" "1 2"; do
    litgpt-mka compare --configs config_hub/pretrain/pythia-14m-{mha,mla,fmka}.yaml --seeds $seeds "${common[@]}" \
      --pretrain_args "[\"--config=$S/configs/optimizer-lr-$lr.yaml\"]" --out_dir $S/lr-$lr || exit 1
  done
done
# 4. a third seed at every swept variant's best rate, 8e-3 (added 2026-12-06, after the sweep): two seeds a side
# spread 0.04 to 0.06 apart there, too much to see a gap of the size 1e-3 showed
litgpt-mka compare --configs config_hub/pretrain/pythia-14m-{mha,mla,fmka}.yaml --seeds 1 2 3 "${common[@]}" \
  --pretrain_args "[\"--config=$S/configs/optimizer-lr-0.008.yaml\"]" --out_dir $S/lr-0.008 || exit 1
echo "study v2 complete"
