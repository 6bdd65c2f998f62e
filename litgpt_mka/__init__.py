"""litgpt-mka: attention variants for litgpt 0.5.13, active in litgpt's own commands.

Layout
------
``attention/``  the variants: the registry (one entry per variant), the KV-cache base, one module per
                variant (equations, weights and cache layout in its docstring).
``plugin/``     how litgpt is extended: activation at interpreter start, the one package that touches
                litgpt's internals (``litgpt_internals/``, a module per litgpt module), the checks of ``Config``
                values.
``measure/``    KV-cache accounting and decode-speed measurement.
``compare/``    ``litgpt-mka compare`` (``cli.py`` is the console script).
``data.py``     the offline ``TextCorpus`` data module; ``presets.py`` reads ``config_hub`` YAMLs.

Importing this package activates the plugin (see :mod:`litgpt_mka.plugin.activation`) unless
``LITGPT_MKA_DISABLE=1``; it imports neither torch nor litgpt.
"""

import os

from litgpt_mka.plugin.activation import DISABLE_ENV_VAR, activate

__version__ = "0.1.0"
__all__ = ["DISABLE_ENV_VAR", "activate"]

if os.environ.get(DISABLE_ENV_VAR, "") not in ("1", "true", "True"):
    activate()
