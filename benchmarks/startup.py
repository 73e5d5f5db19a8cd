"""Wall time of commands that must answer before torch or open_clip is imported: `cbmctl --help`, a rerun
of a finished embed ("up to date"), missing offline weights, an unknown dataset, a missing argument.
The target for every case but --help is under 2 s on an idle 2-core machine.

    python benchmarks/startup.py [--repeats 7] [--cases help,embed-rerun,...] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MISSING_WEIGHTS = ["--model", "ViT-B-32", "--pretrained", "laion2b_s34b_b79k"]
# name -> (cbmctl arguments, with {world} for the demo world, expected exit code)
CASES = {
    "help": (["--help"], 0),
    "embed-rerun": (["embed", "{world}", "--quiet"], 0),
    "embed-missing-weights": (["embed", "{world}", *MISSING_WEIGHTS], 1),
    "train-missing-weights": (["train", "{world}", *MISSING_WEIGHTS], 1),
    "embed-unknown-dataset": (["embed", "no-such-dataset"], 1),
    "train-unknown-dataset": (["train", "no-such-dataset"], 1),
    "cms-unknown-dataset": (["cms", "no-such-dataset"], 1),
    "train-no-argument": (["train"], None),
}


def _prepare(workdir: Path, env: dict) -> Path:
    """A demo world embedded once with the shipped demo CLIP, so that an embed rerun has a finished cache."""
    world = workdir / "demo"
    for args in (["demo", "make", str(world)], ["embed", str(world), "--quiet"]):
        subprocess.run([sys.executable, "-m", "cbmctl", *args], env=env, check=True, capture_output=True)
    return world


def _time(args: list[str], env: dict, repeats: int) -> tuple[list[float], int, str]:
    timings, code, last = [], 0, ""
    for _ in range(repeats):
        started = time.perf_counter()
        run = subprocess.run([sys.executable, "-m", "cbmctl", *args], env=env, capture_output=True, text=True)
        timings.append(time.perf_counter() - started)
        code = run.returncode
        shown = run.stdout if run.returncode == 0 and run.stdout.strip() else run.stderr or run.stdout
        last = (shown.strip().splitlines()[-1:] or [""])[0][:160]
    return timings, code, last


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, from {', '.join(CASES)}")
    parser.add_argument("--json", default=None, help="also write the result here")
    args = parser.parse_args(argv)
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = sorted(set(cases) - set(CASES))
    if unknown:
        parser.error(f"unknown case {unknown[0]!r}")
    with tempfile.TemporaryDirectory(prefix="cbmctl-startup-") as tmp:
        workdir = Path(tmp)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
               "CBMCTL_HOME": str(workdir / "home"), "CBMCTL_CACHE_DIR": str(workdir / "cache"),
               "HF_HOME": str(workdir / "hf"), "HF_HUB_CACHE": str(workdir / "hf" / "hub"), "HF_HUB_OFFLINE": "1"}
        env.pop("CBMCTL_DATA", None)
        world = _prepare(workdir, env) if any("{world}" in " ".join(CASES[c][0]) for c in cases) else None
        rows = []
        for case in cases:
            template, expected = CASES[case]
            argv_case = [a.replace("{world}", str(world)) for a in template]
            timings, code, last = _time(argv_case, {**env, "PWD": tmp}, args.repeats)
            rows.append({"case": case, "command": "cbmctl " + " ".join(template), "median_seconds":
                         round(statistics.median(timings), 3), "min_seconds": round(min(timings), 3),
                         "exit_code": code, "expected_exit_code": expected, "last_line": last})
    loaded = subprocess.run([sys.executable, "-c", "import sys, cbmctl.cli; print('torch' in sys.modules)"],
                            capture_output=True, text=True, check=True, env=env).stdout.strip()
    result = {"benchmark": "startup", "repeats": args.repeats, "cases": rows, "torch_imported_by_cli": loaded == "True"}
    help_row = next((r for r in rows if r["case"] == "help"), None)
    if help_row:  # the keys earlier reports used
        result.update(median_seconds=help_row["median_seconds"], min_seconds=help_row["min_seconds"])
    print(markdown(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return result


def markdown(result: dict) -> str:
    lines = [f"Wall seconds over {result['repeats']} runs each (HF_HUB_OFFLINE=1, empty HF cache; `{{world}}` is a "
             f"demo world embedded once); torch imported by the CLI module: {result['torch_imported_by_cli']}.\n",
             "| case | command | median s | min s | exit | last line |", "|---|---|---|---|---|---|"]
    for row in result["cases"]:
        exit_text = str(row["exit_code"]) + ("" if row["expected_exit_code"] in (None, row["exit_code"])
                                             else f" (expected {row['expected_exit_code']})")
        last = row["last_line"].replace("|", "\\|")
        lines.append(f"| {row['case']} | `{row['command']}` | {row['median_seconds']} | {row['min_seconds']} | "
                     f"{exit_text} | {last} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
