"""``litgpt.scripts.convert_lit_checkpoint`` (``litgpt convert_from_litgpt``): no weights that no Hugging Face
model can hold.

``extend_convert_lit_checkpoint_module`` wraps two functions of the module. Which copy function writes the
checkpoint (from the config's name and MLP class) stays litgpt's own decision, made by litgpt's code:

* ``convert_lit_checkpoint`` reads the checkpoint's config and refuses a variant that no Hugging Face
  architecture litgpt converts to holds (MLA, MKA:
  :func:`~litgpt_mka.finetune.support.check_hugging_face_counterpart`) before litgpt runs, so nothing is written.
* ``copy_weights_gpt_neox``, which litgpt's ``convert_lit_checkpoint`` looks up in the module when it picks it
  (``partial(copy_weights_gpt_neox, config)``), refuses grouped key/value heads (GQA, MQA), which Hugging Face
  GPT-NeoX cannot hold (:func:`~litgpt_mka.finetune.support.check_gpt_neox_key_value_heads`). By then litgpt has
  created ``output_dir`` and opened ``output_dir/model.pth`` (``incremental_save``), so the
  ``convert_lit_checkpoint`` wrapper removes whichever of them did not exist before the call: the refusal
  leaves nothing behind. A ``model.pth`` that was there before the call (which litgpt would empty on opening)
  is moved aside first and put back on any failure, so nothing is lost either.
"""

import contextlib
import functools
import os
from itertools import takewhile
from pathlib import Path
from types import ModuleType

from litgpt_mka.finetune.support import (
    HuggingFaceConversionRefused,
    check_gpt_neox_key_value_heads,
    check_hugging_face_counterpart,
)
from litgpt_mka.plugin.litgpt_internals import _first_time, check_litgpt_version

CONVERTED_FILE = "model.pth"  # what litgpt's convert_lit_checkpoint writes into output_dir


def extend_convert_lit_checkpoint_module(module: ModuleType) -> None:
    """``convert_from_litgpt`` refuses, leaving nothing written, a checkpoint no Hugging Face model can hold."""
    check_litgpt_version()
    if not _first_time(module):
        return
    module.copy_weights_gpt_neox = _refusing_grouped_heads(module.copy_weights_gpt_neox)
    module.convert_lit_checkpoint = _refusing_variants_without_counterpart(module, module.convert_lit_checkpoint)


def _refusing_grouped_heads(litgpt_copy_weights_gpt_neox):
    """litgpt's GPT-NeoX copy function, which first refuses a config with grouped key/value heads."""

    @functools.wraps(litgpt_copy_weights_gpt_neox)
    def copy_weights_gpt_neox(config, *args, **kwargs):
        check_gpt_neox_key_value_heads(config)
        return litgpt_copy_weights_gpt_neox(config, *args, **kwargs)

    return copy_weights_gpt_neox


def _refusing_variants_without_counterpart(module: ModuleType, litgpt_convert):
    """litgpt's ``convert_lit_checkpoint``, after the variant check, and with nothing left when it refuses."""

    @functools.wraps(litgpt_convert)
    def convert_lit_checkpoint(checkpoint_dir, output_dir) -> None:
        config_file = module.extend_checkpoint_dir(checkpoint_dir) / "model_config.yaml"
        if config_file.is_file():  # litgpt reports a missing file itself
            check_hugging_face_counterpart(module.Config.from_file(config_file))
        with _nothing_left_on_refusal(Path(output_dir)):
            return litgpt_convert(checkpoint_dir, output_dir)

    return convert_lit_checkpoint


@contextlib.contextmanager
def _nothing_left_on_refusal(output_dir: Path):
    """On a refusal inside, removes ``output_dir/model.pth`` and the directories to it that were not there before;
    on any failure inside, puts back the ``model.pth`` that was there before (moved aside meanwhile)."""
    converted = output_dir / CONVERTED_FILE
    not_there_before = list(takewhile(lambda path: not path.exists(), [converted, output_dir, *output_dir.parents]))
    earlier = converted.with_name(f"{CONVERTED_FILE}.before-convert") if converted.is_file() else None
    if earlier is not None:
        os.replace(converted, earlier)
    try:
        yield
    except BaseException as error:
        if isinstance(error, HuggingFaceConversionRefused):
            _remove_deepest_first(not_there_before)
        if earlier is not None:
            os.replace(earlier, converted)
        raise
    if earlier is not None:
        earlier.unlink()


def _remove_deepest_first(paths: list[Path]) -> None:
    """Removes each file, and each directory that is empty then; a directory something else was put in stays."""
    for path in paths:
        if path.is_dir():
            with contextlib.suppress(OSError):
                path.rmdir()
        else:
            path.unlink(missing_ok=True)
