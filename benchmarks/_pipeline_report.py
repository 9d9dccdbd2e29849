"""Shared by the pipeline benchmarks: replace one named section of ``benchmarks/results/pipeline.md`` atomically."""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "pipeline.md"
HEADER = "# Pipeline benchmarks\n\nWritten by `benchmarks/bench_retrieval.py` and `benchmarks/bench_privacy_utility.py`.\n"


def write_section(name: str, markdown: str, path: Path = RESULTS) -> Path:
    """Put ``markdown`` between ``<!-- name -->`` markers in ``path``, keeping the other sections."""
    text = path.read_text() if path.exists() else HEADER
    block = f"<!-- {name} -->\n{markdown.rstrip()}\n<!-- /{name} -->"
    pattern = re.compile(rf"<!-- {re.escape(name)} -->.*?<!-- /{re.escape(name)} -->", re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else f"{text.rstrip()}\n\n{block}\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=".pipeline.md.")
    with os.fdopen(handle, "w") as file:
        file.write(text)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temp, path)
    return path
