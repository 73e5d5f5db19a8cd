"""Time of commands that must answer before torch or open_clip is imported: `cbmctl --help`, a rerun of a
finished embed ("up to date"), and every mistake that can be found without torch — missing offline weights
(named or the default ViT-L-14), an unknown or misspelt dataset, a path shaped like a known dataset, a
missing argument, a misspelt method or concept set, explain's missing image and misspelt concept, class or
unit names, inspect and report with no runs. Wall and CPU seconds of each command (the CPU time is what an
idle machine would take; wall time on a loaded one is larger). The target for every case but --help is
under 2 s on an idle 2-core machine.

    python benchmarks/startup.py [--repeats 7] [--cases help,embed-rerun,...] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MISSING_WEIGHTS = ["--model", "ViT-B-32", "--pretrained", "laion2b_s34b_b79k"]
# name -> (cbmctl arguments, expected exit code); {world} is a demo world embedded once, {runs} a folder with
# one short run on it, {image} one of its images, {cub} a CUB-layout dataset without a cbmctl.yaml (so the
# default backbone, ViT-L-14, whose weights are not here), {tmp} the benchmark's scratch folder
CASES = {
    "help": (["--help"], 0),
    "embed-rerun": (["embed", "{world}", "--quiet"], 0),
    "embed-missing-weights": (["embed", "{world}", *MISSING_WEIGHTS], 1),
    "train-missing-weights": (["train", "{world}", *MISSING_WEIGHTS], 1),
    "train-default-weights-offline": (["train", "{cub}"], 1),
    "embed-unknown-dataset": (["embed", "no-such-dataset"], 1),
    "train-unknown-dataset": (["train", "no-such-dataset"], 1),
    "cms-unknown-dataset": (["cms", "no-such-dataset"], 1),
    "train-misspelt-dataset": (["train", "cifr10"], 1),
    "train-dataset-layout-path": (["train", "{tmp}/data/cub"], 1),
    "train-no-argument": (["train"], None),
    "train-misspelt-method": (["train", "{world}", "--compare", "gumbl,none"], 1),
    "train-misspelt-concept-set": (["train", "{world}", "--concepts", "demoo"], 1),
    "explain-missing-image": (["explain", "{tmp}/missing.jpg", "--runs-root", "{runs}"], 1),
    "explain-misspelt-concept": (["explain", "{image}", "--runs-root", "{runs}", "--zero", "circel shape"], 1),
    "explain-misspelt-class": (["explain", "{image}", "--runs-root", "{runs}", "--class", "azure glimerwing"], 1),
    "explain-misspelt-unit": (["explain", "--unit", "stra shape", "--runs-root", "{runs}"], 1),
    "inspect-no-runs": (["inspect", "--runs-root", "{tmp}/no-runs"], 1),
    "report-no-runs": (["report", "--runs-root", "{tmp}/no-runs"], 1),
}
NEEDS_RUN = ("{runs}", "{image}")


def _cbmctl(args: list[str], env: dict) -> None:
    subprocess.run([sys.executable, "-m", "cbmctl", *args], env=env, check=True, capture_output=True)


def _prepare(workdir: Path, env: dict, cases: list[str]) -> dict[str, str]:
    """The placeholders' values: a demo world embedded once with the shipped demo CLIP (so that an embed
    rerun has a finished cache), a short run on it when a case explains, a CUB-layout dataset."""
    world = workdir / "demo"
    _cbmctl(["demo", "make", str(world)], env)
    _cbmctl(["embed", str(world), "--quiet"], env)
    places = {"{world}": str(world), "{tmp}": str(workdir), "{runs}": str(workdir / "runs"),
              "{image}": str(sorted((world / "images").rglob("*.jpg"))[0]), "{cub}": str(workdir / "cub")}
    if any(p in " ".join(CASES[c][0]) for c in cases for p in NEEDS_RUN):
        _cbmctl(["train", str(world), "--epochs", "3", "--min-epochs", "1", "--out", str(workdir / "runs"), "-q"], env)
    subprocess.run([sys.executable, "-c", "import sys; from cbmctl.datasets.synthetic import make_cub; "
                    "make_cub(sys.argv[1])", str(workdir / "cub-data")], env=env, check=True, capture_output=True)
    places["{cub}"] = str(workdir / "cub-data" / "CUB_200_2011")
    return places


def _time(args: list[str], env: dict, repeats: int) -> tuple[list[float], list[float], int, str]:
    """(wall seconds, CPU seconds, exit code, last line) of `repeats` runs; the CPU time is the child's user +
    system time, read from the rusage of finished children."""
    timings, cpu, code, last = [], [], 0, ""
    for _ in range(repeats):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        run = subprocess.run([sys.executable, "-m", "cbmctl", *args], env=env, capture_output=True, text=True)
        timings.append(time.perf_counter() - started)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
        code = run.returncode
        shown = run.stdout if run.returncode == 0 and run.stdout.strip() else run.stderr or run.stdout
        last = (shown.strip().splitlines()[-1:] or [""])[0][:200]
    return timings, cpu, code, last


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
        places = _prepare(workdir, env, cases) if any("{" in " ".join(CASES[c][0]) for c in cases) else {}
        rows = []
        for case in cases:
            template, expected = CASES[case]
            argv_case = list(template)
            for key, value in places.items():
                argv_case = [a.replace(key, value) for a in argv_case]
            timings, cpu, code, last = _time(argv_case, {**env, "PWD": tmp}, args.repeats)
            rows.append({"case": case, "command": "cbmctl " + " ".join(template), "median_seconds":
                         round(statistics.median(timings), 3), "min_seconds": round(min(timings), 3),
                         "median_cpu_seconds": round(statistics.median(cpu), 3), "exit_code": code,
                         "expected_exit_code": expected, "last_line": last.replace(tmp, "{tmp}")})
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
    lines = [f"Wall and CPU seconds over {result['repeats']} runs each (HF_HUB_OFFLINE=1, empty HF cache; `{{world}}` "
             "is a demo world embedded once, `{runs}` a short run on it, `{cub}` a CUB-layout dataset without a "
             f"cbmctl.yaml); torch imported by the CLI module: {result['torch_imported_by_cli']}.\n",
             "| case | command | median s | min s | median CPU s | exit | last line |", "|---|---|---|---|---|---|---|"]
    for row in result["cases"]:
        exit_text = str(row["exit_code"]) + ("" if row["expected_exit_code"] in (None, row["exit_code"])
                                             else f" (expected {row['expected_exit_code']})")
        last = row["last_line"].replace("|", "\\|")
        lines.append(f"| {row['case']} | `{row['command']}` | {row['median_seconds']} | {row['min_seconds']} | "
                     f"{row.get('median_cpu_seconds', '-')} | {exit_text} | {last} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
