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


def cbmctl(args: list[str], cwd: Path, env: dict | None = None, check: bool = True):
    """Run `python -m cbmctl ARGS` in `cwd` with this interpreter; (stdout, stderr, seconds)."""
    import subprocess
    import sys
    import time
    root = Path(__file__).resolve().parents[1]
    environment = {**os.environ, "PYTHONPATH": str(root), **(env or {})}
    started = time.perf_counter()
    run = subprocess.run([sys.executable, "-m", "cbmctl", *map(str, args)], cwd=cwd, env=environment,
                         capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if check and run.returncode != 0:
        raise SystemExit(f"cbmctl {' '.join(map(str, args))} failed ({run.returncode}):\n{run.stderr[-2000:]}")
    return run.stdout, run.stderr, seconds


def cbmctl_json(args: list[str], cwd: Path, env: dict | None = None):
    return json.loads(cbmctl([*args, "--json"], cwd, env)[0])
