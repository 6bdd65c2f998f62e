"""lm-eval knows :class:`litgpt_mka.evaluate.lm.LitgptLM` as the model ``litgpt-mka``, with no import by the user.

    lm_eval --model litgpt-mka --model_args checkpoint_dir=out/final --tasks piqa --batch_size auto

lm-eval finds models only in its own registry (``lm_eval.api.registry``; it reads no entry points), and its
command line imports nothing of ours. So the plugin's import finder (:mod:`litgpt_mka.plugin.activation`, set up
at interpreter start by ``litgpt_mka.pth``) calls :func:`register_with_lm_eval` right after ``lm_eval.models``,
the package whose import fills lm-eval's registry, is first imported:

* lm-eval 0.4.10 and later (a ``Registry`` object with lazy targets): the name is registered as the lazy target
  ``"litgpt_mka.evaluate.lm:LitgptLM"``, so nothing heavy is imported until lm-eval builds the model;
* lm-eval 0.4.9 and earlier (a plain dict, filled with classes): the class itself, through ``register_model``.

Registering twice is a no-op (``LITGPT_MKA_DISABLE=1`` switches the finder, and so this, off).
"""

MODEL_NAME = "litgpt-mka"
LAZY_TARGET = "litgpt_mka.evaluate.lm:LitgptLM"


def register_with_lm_eval(models_module=None) -> None:
    """Registers ``litgpt-mka`` in lm-eval's model registry unless it is there (`models_module`: the just
    imported ``lm_eval.models``, unused: the registry lives in ``lm_eval.api.registry``)."""
    from lm_eval.api import registry

    models = registry.MODEL_REGISTRY
    if MODEL_NAME in models:
        return
    if hasattr(models, "register"):  # lm-eval >= 0.4.10: Registry.register(name, target="module:attribute")
        models.register(MODEL_NAME, target=LAZY_TARGET)
        return
    from litgpt_mka.evaluate.lm import LitgptLM

    registry.register_model(MODEL_NAME)(LitgptLM)
