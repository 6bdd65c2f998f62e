"""Measurements shared by the benchmarks and ``compare``: KV-cache size (``kv_cache_size.py``), decode speed
and the cache prefill before it (``decode_speed.py``), the busy-machine rule (``load.py``), and parameters and
training memory per GPU by formula (``training_memory.py``)."""
