"""``litgpt-mka convert``: a trained MHA litgpt checkpoint -> GQA, MQA or MLA, ready for litgpt's commands.

    litgpt-mka convert CHECKPOINT_DIR --to gqa --n_query_groups 2 --out_dir DIR
    litgpt-mka convert CHECKPOINT_DIR --to mqa --out_dir DIR
    litgpt-mka convert CHECKPOINT_DIR --to mla --kv_lora_rank 32 [--calibration_data train.txt] --out_dir DIR

Every layer's attention is converted; embeddings, norms, MLPs and the output head are copied unchanged. The
output folder is what ``litgpt generate``, ``litgpt chat``, ``litgpt finetune_*`` and ``litgpt pretrain
--initial_checkpoint_dir`` read.

Modules
-------
* :mod:`.command`: the command's options (:func:`~.command.convert`) and the conversion
  (:func:`~.command.convert_checkpoint`): source -> layers -> report -> new folder.
* :mod:`.gqa`: mean-pooled key/value heads (GQA and MQA).
* :mod:`.mla`: shared RoPE key, joint SVD of non-rotary keys and values, calibrated ``kv_a_norm``.
* :mod:`.checkpoint`: reads the MHA source (through :mod:`litgpt_mka.checkpoint`), collects calibration
  activations, writes the result atomically.
"""

from litgpt_mka.convert.command import TARGETS, convert, convert_checkpoint

__all__ = ["TARGETS", "convert", "convert_checkpoint"]
