"""How litgpt is extended: activation (``activation.py``), the one module touching litgpt's internals
(``litgpt_internals.py``) and the ``Config`` checks (``config_checks.py``)."""
