"""litgpt-mka: attention variants for litgpt 0.5.13, active in litgpt's own commands.

Layout (lowest layer first; a module imports only lower layers: docs/design.md, ``tests/test_layers.py``)
-----------------------------------------------------------------------------------------------------------
``validation.py``  integer and dtype-name checks; ``atomic.py`` atomic file writes; ``precision.py`` the
                   machine's default precision; ``presets.py`` reads ``config_hub`` YAMLs.
``attention/``     the variants: the registry (one entry per variant), the KV-cache base, one module per
                   variant (equations, weights and cache layout in its docstring), quantized caches.
``data.py``        the offline ``TextCorpus`` data module and the validation windows.
``measure/``       KV-cache accounting, decode speed, the busy-machine rule, training memory by formula.
``finetune/``      the variants' LoRA forms; which litgpt command supports which variant.
``plugin/``        how litgpt is extended: activation at interpreter start, the one package that touches
                   litgpt's internals (``litgpt_internals/``, a module per litgpt module), the checks of
                   ``Config`` values.
``checkpoint.py``  reading a litgpt checkpoint folder (config, weights, the model).
``convert/``       ``litgpt-mka convert``: MHA checkpoint -> GQA, MQA or MLA.
``evaluate/``      ``litgpt-mka evaluate`` and ``lm_eval --model litgpt-mka``; the cloze task.
``compare/``       ``litgpt-mka compare`` and ``report``.
``cli.py``         the ``litgpt-mka`` console script.

Importing this package activates the plugin (see :mod:`litgpt_mka.plugin.activation`) unless
``LITGPT_MKA_DISABLE=1``; it imports neither torch nor litgpt.
"""

import os

from litgpt_mka.plugin.activation import DISABLE_ENV_VAR, activate

__version__ = "0.1.0"
__all__ = ["DISABLE_ENV_VAR", "activate"]

if os.environ.get(DISABLE_ENV_VAR, "") not in ("1", "true", "True"):
    activate()
