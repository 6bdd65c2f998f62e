"""``litgpt.utils``: the machine's default precision, and optimizer dicts litgpt would partly ignore.

``extend_utils_module``
    ``get_default_supported_precision`` (bf16 on every machine without CUDA) is replaced by
    :func:`litgpt_mka.precision.machine_default_precision`: ``32-true`` on CPUs that emulate bf16, litgpt's
    answer everywhere else. Every litgpt command that fills an unset ``--precision`` (pretrain, finetune_*,
    generate*, chat, serve, ``litgpt.api``) imports the function by name from ``litgpt.utils``, so replacing
    it there right after ``litgpt.utils`` executes covers them all; bindings made before the plugin was
    activated are replaced too. ``instantiate_torch_optimizer`` refuses keys beside ``class_path`` and
    ``init_args`` (``--optimizer.lr 3e-3`` on litgpt 0.5.13's command line adds one, which litgpt ignores).
    ``save_config`` writes litgpt's ``model_config.yaml`` without the plugin's fields where they hold their
    defaults, so that a stock architecture's checkpoint stays one that litgpt without the plugin reads
    (a variant's keeps them: it needs the plugin to be built).
"""

import functools
import sys
from pathlib import Path
from types import ModuleType

from litgpt_mka.plugin.config_checks import validate_optimizer
from litgpt_mka.plugin.litgpt_internals import _first_time, check_litgpt_version
from litgpt_mka.precision import machine_default_precision


def extend_utils_module(module: ModuleType) -> None:
    check_litgpt_version()
    if not _first_time(module):
        return
    litgpt_default = module.get_default_supported_precision
    litgpt_instantiate = module.instantiate_torch_optimizer

    @functools.wraps(litgpt_default)
    def get_default_supported_precision(training: bool) -> str:
        return machine_default_precision(training, litgpt_default)

    @functools.wraps(litgpt_instantiate)
    def instantiate_torch_optimizer(optimizer, model_parameters, **kwargs):
        validate_optimizer(optimizer)
        return litgpt_instantiate(optimizer, model_parameters, **kwargs)

    _replace_everywhere(module, litgpt_default, get_default_supported_precision)
    _replace_everywhere(module, litgpt_instantiate, instantiate_torch_optimizer)
    litgpt_save_config = module.save_config

    @functools.wraps(litgpt_save_config)
    def save_config(config, checkpoint_dir) -> None:
        litgpt_save_config(config, checkpoint_dir)
        without_default_plugin_fields(Path(checkpoint_dir) / "model_config.yaml")

    _replace_everywhere(module, litgpt_save_config, save_config)


def without_default_plugin_fields(path: Path) -> None:
    """Rewrites a ``model_config.yaml`` without the plugin's ``Config`` fields that hold their defaults."""
    import yaml

    from litgpt_mka.plugin.litgpt_internals.config import plugin_field_defaults

    defaults = plugin_field_defaults()
    with open(path, encoding="utf-8") as f:
        saved = yaml.safe_load(f)
    kept = {k: v for k, v in saved.items() if k not in defaults or v != defaults[k]}
    if kept != saved:
        with open(path, "w", encoding="utf-8") as f:
            yaml.dump(kept, f)  # as litgpt's save_config dumps it


def _replace_everywhere(module: ModuleType, original, replacement) -> None:
    """Rebinds `original` to `replacement` in `module` and in every litgpt module that imported it by name before."""
    name = original.__name__
    setattr(module, name, replacement)
    for module_name, imported in list(sys.modules.items()):
        if module_name.startswith("litgpt.") and getattr(imported, name, None) is original:
            setattr(imported, name, replacement)
