"""Measurements shared by the benchmarks and ``compare``: KV-cache size (``kv_cache_size.py``) and decode
speed (``decode_speed.py``)."""
