#!/bin/bash
# The exact commands behind docs/convert-pythia-14m (run from the project root; RUNS holds the checkpoints).
# Every litgpt process runs with one thread (OMP_NUM_THREADS=1) on a 2-core CPU shared with other jobs.
set -euo pipefail
RUNS=${RUNS:-out/convert-pythia-14m}
DATA="--data.train_path ../shared/data/tinystories/train.txt --data.val_path ../shared/data/tinystories/val.txt"
export OMP_NUM_THREADS=1

# 1. the MHA source: 409,600 tokens (100 steps of 8 x 512), float32, compiled as it was made (litgpt compiles; the
#    plugin of today trains eagerly on a CPU unless LITGPT_MKA_CPU_COMPILE=1: docs/precision.md)
[ -f $RUNS/source/final/lit_model.pth ] || LITGPT_MKA_CPU_COMPILE=1 litgpt pretrain --config config_hub/pretrain/pythia-14m-mha.yaml \
  --data litgpt_mka.data.TextCorpus $DATA --tokenizer_dir ../shared/tokenizers/pythia \
  --precision 32-true --train.max_tokens 409600 --eval.interval 1000 --eval.final_validation false \
  --out_dir $RUNS/source

# 2. conversions (calibration: the first 8,192 training tokens, in 16 windows of 513)
CAL="--calibration_data ../shared/data/tinystories/train.txt --calibration_tokens 8192 --calibration_seq_length 512"
convert() { local name=$1; shift; [ -d $RUNS/$name ] || litgpt-mka convert $RUNS/source/final "$@" --out_dir $RUNS/$name; }
convert mha --to gqa --n_query_groups 4 $CAL  # the identity conversion: the source as a plain state dict
convert gqa2 --to gqa --n_query_groups 2 $CAL
convert mqa --to mqa $CAL
for L in 16 32 64; do convert mla$L --to mla --kv_lora_rank $L $CAL; done
# ablations at L = 32 and the full rank (conversion only, not uptrained)
convert mla128 --to mla --kv_lora_rank 128 $CAL
convert mla32-rope-mean --to mla --kv_lora_rank 32 --rope_fit mean $CAL
convert mla32-norm-ones --to mla --kv_lora_rank 32 --kv_norm ones $CAL
convert mla32-sampled-calibration --to mla --kv_lora_rank 32 --calibration_tokens 8192 --calibration_seq_length 512
convert mla32-randomized-svd --to mla --kv_lora_rank 32 --svd randomized $CAL

# 3. uptraining on 5% of the source's tokens, from the converted weights (eager: compiling costs more than
#    10 steps on this CPU; the source run above was compiled, litgpt's default)
export TORCHDYNAMO_DISABLE=1
for name in mha gqa2 mqa mla16 mla32 mla64; do  # mha: the source itself uptrained, the control
  [ -f $RUNS/$name-uptrained/final/lit_model.pth ] || litgpt pretrain --config config_hub/pretrain/pythia-14m-mha.yaml \
    --config docs/convert-pythia-14m/uptrain.yaml --config $RUNS/$name/pretrain_model.yaml \
    --initial_checkpoint_dir $RUNS/$name --tokenizer_dir $RUNS/$name --out_dir $RUNS/$name-uptrained
done

python docs/convert-pythia-14m/collect.py --runs $RUNS --out docs/convert-pythia-14m  # a first table

# 4. the same architectures from scratch on the same total budget (409,600 + 20,480 tokens), source settings
for name in ${SCRATCH:-mla32 mqa gqa2 mha}; do  # mha: the source architecture on the same budget
  [ -f $RUNS/$name-scratch/final/lit_model.pth ] || litgpt pretrain --config config_hub/pretrain/pythia-14m-mha.yaml \
    --config $RUNS/$name/pretrain_model.yaml --data litgpt_mka.data.TextCorpus $DATA \
    --tokenizer_dir ../shared/tokenizers/pythia --precision 32-true --train.max_tokens 430080 \
    --eval.interval 1000 --eval.final_validation false --out_dir $RUNS/$name-scratch
done

# 5. held-out loss of every checkpoint (every validation token once), KV bytes, the tables
python docs/convert-pythia-14m/collect.py --runs $RUNS --out docs/convert-pythia-14m
