"""How the plugin switches itself on.

litgpt has no plugin registry, and jsonargparse treats its ``Config`` dataclass as final, so
unknown YAML keys are rejected before any user code could run. The package therefore installs a
one-line ``litgpt_mka.pth`` file into site-packages (``pip install .`` and ``pip install -e .``
alike). Python's ``site`` module executes it at interpreter start: it imports this package, which
only appends a tiny finder to ``sys.meta_path`` (no torch, no litgpt import; see
``python -X importtime -c pass``). The first time ``litgpt.config``, ``litgpt.model``,
``litgpt.pretrain`` or another module of ``_EXTENSIONS`` (``litgpt.utils``, LoRA, adapters, the fine-tuning
scripts, ``convert_from_litgpt``) is imported, by the ``litgpt`` console script, ``python -m litgpt`` or user
code, the finder lets the module execute normally and then hands it to the module of
:mod:`litgpt_mka.plugin.litgpt_internals` that extends it (one per litgpt module: ``config``, ``model``,
``utils``, ``pretrain``, ``finetune``, ``convert``), the only package that touches litgpt's internals; only
that module of the package is imported. The same finder registers the model ``litgpt-mka`` with lm-eval when
``lm_eval.models`` is first imported (:mod:`litgpt_mka.evaluate.registration`).

* ``import litgpt_mka`` activates the same way (and patches modules that were imported earlier).
* Activation is idempotent: each litgpt module is extended once.
* ``LITGPT_MKA_DISABLE=1`` in the environment switches the automatic activation off; litgpt then
  behaves exactly as if the plugin were not installed. :func:`activate` still works explicitly.
"""

import importlib
import sys

DISABLE_ENV_VAR = "LITGPT_MKA_DISABLE"

_INTERNALS = "litgpt_mka.plugin.litgpt_internals"
# imported module name -> (our module, name of the function in it that extends it); our modules of litgpt's are
# those of `litgpt_mka.plugin.litgpt_internals`
_EXTENSIONS = {
    # the default precision (litgpt_mka/precision.py): before every module that imports it by name
    "litgpt.utils": (f"{_INTERNALS}.utils", "extend_utils_module"),
    "litgpt.config": (f"{_INTERNALS}.config", "extend_config_module"),
    "litgpt.model": (f"{_INTERNALS}.model", "extend_model_module"),
    "litgpt.pretrain": (f"{_INTERNALS}.pretrain", "extend_pretrain_module"),
    # fine-tuning and conversion (litgpt_mka/finetune/): each refuses or builds the configured variant
    "litgpt.lora": (f"{_INTERNALS}.finetune", "extend_lora_module"),
    "litgpt.adapter": (f"{_INTERNALS}.finetune", "extend_adapter_module"),
    "litgpt.scripts.convert_lit_checkpoint": (f"{_INTERNALS}.convert", "extend_convert_lit_checkpoint_module"),
    # the training scripts: a warning for bf16 on a CPU that emulates it
    **{
        f"litgpt.finetune.{name}": (f"{_INTERNALS}.finetune", "extend_finetune_module")
        for name in ("full", "lora", "lora_legacy", "adapter", "adapter_v2")
    },
    # lm-eval's models: the model `litgpt-mka` joins its registry (`lm_eval --model litgpt-mka`)
    "lm_eval.models": ("litgpt_mka.evaluate.registration", "register_with_lm_eval"),
}


def _extend(module) -> None:
    extending_module, function = _EXTENSIONS[module.__name__]
    extensions = importlib.import_module(extending_module)
    getattr(extensions, function)(module)


class _ExtendingLoader:
    """Wraps a module's real loader: executes the module, then extends it."""

    def __init__(self, loader) -> None:
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        self._loader.exec_module(module)
        _extend(module)

    def __getattr__(self, name):  # get_source, get_code, ... for inspect and linecache
        return getattr(self._loader, name)


class _LitgptFinder:
    """A `sys.meta_path` finder that only ever answers for the modules in `_EXTENSIONS`."""

    def find_spec(self, fullname, path, target=None):
        if fullname not in _EXTENSIONS:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _ExtendingLoader(spec.loader)
                return spec
        return None


def activate() -> None:
    """Extend litgpt now if its modules are already imported, and on their first import otherwise."""
    if not any(isinstance(finder, _LitgptFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _LitgptFinder())
    for name in _EXTENSIONS:  # dict order: config before model before the modules built on them
        module = sys.modules.get(name)
        if module is not None:
            _extend(module)

