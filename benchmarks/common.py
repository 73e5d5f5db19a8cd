"""What every benchmark shares: a description of the machine, and how results are reported."""
from __future__ import annotations

import json
import os
import platform
from pathlib import Path


def machine() -> str:
    import torch
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, {gpu}; "
            f"Python {platform.python_version()}, torch {torch.__version__}")


def report(result: dict, markdown: str, json_path: str | None) -> dict:
    """Print the result's markdown and, when asked, write the result as JSON."""
    print(markdown)
    if json_path:
        Path(json_path).write_text(json.dumps(result, indent=1))
    return result
