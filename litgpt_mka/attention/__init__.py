"""The attention variants: ``registry.py`` (one entry per variant), one module per variant."""
