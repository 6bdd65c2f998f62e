"""Quantized KV caches of a comparison's runs (``--kv_cache_quantizations``): ``runs/<run>/kv_quantization.json``.

After a run finished, its final checkpoint decodes the primary validation text through the KV cache,
teacher-forced as ``litgpt generate`` feeds it (:func:`litgpt_mka.compare.heldout.cached_heldout_loss`: each
window's first 64 inputs as one chunk, then one input at a time), once through the unquantized cache and once
per requested ``kv_cache_quantization``. The difference of the two losses of one checkpoint is what the
quantized cache costs; the unquantized cached loss agrees with the run's full-forward validation loss (both are
recorded, and the report says by how much they differ at most).

Where the run's class keeps litgpt's own cache (MHA's ``CausalSelfAttention``), ours that replaces it decodes
(:func:`litgpt_mka.attention.registry.quantizable_attention_class`: the same weights and outputs), for the
unquantized loss too, so both sides of the difference come from one class. Cache bytes: what ``set_kv_cache``
allocates for the run's decode batch x context in its decode dtype, scales and offsets included, like the run's
own KV column, so the quantized caches are points on the same Pareto plot. The model runs in float32.

Like lm-eval scores (:mod:`.tasks`), a phase of its own after the run finished (``python -m
litgpt_mka.compare.worker kv_quantization RUN_DIR --quantizations int8,int4``), written beside ``result.json``
and never into it: a rerun that asks for other quantizations measures again and trains nothing. A file counts
for the report only when it holds exactly the requested quantizations.
"""

import dataclasses
import time
from pathlib import Path

from litgpt_mka.atomic import read_json, write_json
from litgpt_mka.compare.layout import RunFolder
from litgpt_mka.compare.records import CachedLoss, KVQuantizationResult, from_json, to_json

KV_QUANTIZATION_FILE = "kv_quantization.json"
UNQUANTIZED = "none"
CACHED_BATCH_SIZE = 32  # validation windows decoded together


def read_kv_quantization(run_dir: Path, quantizations: list[str]) -> KVQuantizationResult | None:
    """The run's kv_quantization.json if it measured exactly `quantizations`, else None."""
    path = Path(run_dir) / KV_QUANTIZATION_FILE
    if not path.is_file():
        return None
    result = from_json(KVQuantizationResult, read_json(path))
    return result if result.quantizations == list(quantizations) else None


def measure_run(run_dir: Path, quantizations: list[str]) -> KVQuantizationResult:
    """Decodes ``run_dir/checkpoints/final`` through each cache and writes ``run_dir/kv_quantization.json``.

    Raises:
        FileNotFoundError: the run has no finished result (its result.json is missing or not "ok").
    """
    import torch
    from litgpt.model import GPT

    from litgpt_mka.attention.registry import quantizable_attention_class
    from litgpt_mka.checkpoint import load_config, load_state, model_weights
    from litgpt_mka.compare import measurements
    from litgpt_mka.compare.heldout import PREFILL_TOKENS, cached_heldout_loss, heldout_data

    started = time.perf_counter()
    folder = RunFolder(run_dir)
    spec, result = folder.read_spec(), folder.read_result()
    if result is None or not result.ok:
        raise FileNotFoundError(f"{folder.result_json} does not hold a finished run; quantized caches need its final/")
    final, settings = folder.checkpoints / "final", spec.measure
    data = heldout_data(final, Path(spec.val_paths[0]))
    state = load_state(final / "lit_model.pth")
    trained = load_config(final)
    decoder = quantizable_attention_class(trained)

    def decode(quantization: str) -> CachedLoss:
        config = dataclasses.replace(trained, attention_class_name=decoder,
                                     kv_cache_quantization=None if quantization == UNQUANTIZED else quantization)
        model = GPT(config)
        model.load_state_dict(model_weights(state))
        model.eval()
        print(f"cached decoding of {data.val_path.name}, {quantization} cache ({decoder})", flush=True)
        loss = cached_heldout_loss(model, data, CACHED_BATCH_SIZE)
        kv = measurements.kv_cache(model, settings.decode_batch_size, settings.context_length, settings.decode_dtype)
        return CachedLoss(quantization=quantization, attention_class_name=decoder,
                          kv_bytes_per_token=kv.bytes_per_token, loss=loss.loss, tokens=loss.tokens)

    with torch.no_grad():
        unquantized = decode(UNQUANTIZED)
        quantized = [decode(name) for name in quantizations]
    measured = KVQuantizationResult(
        quantizations=list(quantizations), val_path=str(data.val_path), prefill_tokens=PREFILL_TOKENS,
        unquantized=unquantized, quantized=quantized, full_forward_loss=result.evaluation.primary.loss,
        wall_time_s=time.perf_counter() - started,
    )
    write_json(folder.path / KV_QUANTIZATION_FILE, to_json(measured))
    return measured
