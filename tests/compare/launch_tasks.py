"""A task for the launcher tests, in a module that submitit's job processes can import by name."""

import json
import os
from pathlib import Path


def record_where(folder: Path, name: str, fail: bool = False, crash: bool = False) -> list[str]:
    """Writes NAME.json (its process, its GPU id); returns [name] if it 'failed', raises if it 'crashed'."""
    if crash:
        raise RuntimeError("the job died")
    where = {"pid": os.getpid(), "gpu": os.environ.get("CUDA_VISIBLE_DEVICES")}
    (folder / f"{name}.json").write_text(json.dumps(where))
    return [name] if fail else []
