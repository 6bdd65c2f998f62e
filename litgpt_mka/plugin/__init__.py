"""How litgpt is extended: activation (``activation.py``), the one package touching litgpt's internals
(``litgpt_internals/``, a module per litgpt module it extends) and the ``Config`` checks (``config_checks.py``)."""
