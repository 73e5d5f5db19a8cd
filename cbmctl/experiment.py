"""One `cbmctl train` invocation: one or more methods × one or more seeds on the same TrainingData,
written to a run directory (config.yaml, metrics.json, model files, curves.png, train.log)."""
from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from cbmctl import runs
from cbmctl.errors import CbmctlError
from cbmctl.model import META_FILE, WEIGHTS_FILE, save_model
from cbmctl.train import BASELINES, TrainConfig, TrainingData, TrainResult, describe, run_method, seeds_summary


@dataclass
class ExperimentResult:
    run_dir: Path
    rows: list[dict]                    # one per method: label, per-metric mean/std over seeds
    results: dict[str, list[TrainResult]] = field(default_factory=dict)


def _unit_dir(run_dir: Path, method: str, seed: int, methods: list[str], seeds: list[int]) -> Path:
    path = run_dir
    if len(methods) > 1:
        path = path / method
    if len(seeds) > 1:
        path = path / f"seed-{seed}"
    return path


def _method_config(base: TrainConfig, method: str, seed: int) -> TrainConfig:
    return replace(base, loss=method, seed=seed, hard=base.hard and method == "gumbel")


def model_metadata(data: TrainingData, config: TrainConfig, result: TrainResult) -> dict:
    return {"concepts": data.concepts, "classes": data.classes, "train_config": asdict(config),
            "method": describe(config), "metrics": result.metrics, **data.record, "versions": runs.versions()}


def run_experiment(data: TrainingData, base: TrainConfig, methods: list[str], seeds: list[int], run_dir: Path,
                   spec: dict, log=print) -> ExperimentResult:
    """Train every method with every seed (resuming units a previous call left unfinished)."""
    run_dir = Path(run_dir)
    runs.write_yaml(run_dir / runs.CONFIG_FILE, spec)
    runs.write_json(run_dir / RECORD_FILE, data.record)
    log_file = open(run_dir / runs.LOG_FILE, "a", encoding="utf-8")

    def say(line: str) -> None:
        log_file.write(line + "\n")
        log_file.flush()
        if log:
            log(line)

    results: dict[str, list[TrainResult]] = {}
    rows = []
    try:
        for method in methods:
            for seed in seeds:
                config = _method_config(base, method, seed)
                unit = _unit_dir(run_dir, method, seed, methods, seeds)
                unit.mkdir(parents=True, exist_ok=True)
                done = unit / runs.METRICS_FILE
                if done.is_file() and len(methods) * len(seeds) > 1:
                    results.setdefault(method, []).append(_load_unit(unit))
                    say(f"{describe(config)} seed {seed}: already done")
                    continue
                checkpoint = unit / runs.CHECKPOINT_FILE
                resume = torch.load(checkpoint, weights_only=False) if checkpoint.is_file() else None
                if resume is not None:
                    say(f"{describe(config)} seed {seed}: resuming after epoch {resume['epoch']}")
                say(f"== {describe(config)}, seed {seed}")
                kwargs = {} if method in BASELINES else {"checkpoint": checkpoint, "log": say, "resume": resume}
                result = run_method(data, config, **kwargs)
                _write_unit(unit, data, config, result)
                checkpoint.unlink(missing_ok=True)
                results.setdefault(method, []).append(result)
                say(f"{describe(config)} seed {seed}: test top-1 {result.metrics['test']['top1']:.4f}")
            summary = seeds_summary(results[method])
            rows.append({"method": describe(_method_config(base, method, seeds[0])), "loss": method,
                         "seeds": seeds, **summary})
    finally:
        log_file.close()
    if len(methods) * len(seeds) > 1:
        _promote_best(run_dir, methods, seeds, results)
    metrics = {"rows": rows, "record": data.record, "versions": runs.versions()}
    if len(methods) * len(seeds) == 1:
        metrics.update(results[methods[0]][0].metrics)
    runs.write_json(run_dir / runs.METRICS_FILE, metrics)
    if len(methods) > 1:
        _write_table(run_dir, rows)
    return ExperimentResult(run_dir, rows, results)


def _write_unit(unit: Path, data: TrainingData, config: TrainConfig, result: TrainResult) -> None:
    if result.model is not None:
        save_model(unit, result.model, model_metadata(data, config, result),
                   {"concept_vectors": data.concept_vectors, "class_vectors": data.class_vectors})
        runs.plot_curves(unit / "curves.png", result.history, f"{describe(config)} on {data.record['dataset']['dataset_name']}")
    runs.write_json(unit / runs.METRICS_FILE, {**result.metrics, "history": result.history,
                                               "train_config": asdict(config)})


def _load_unit(unit: Path) -> TrainResult:
    import json
    metrics = json.loads((unit / runs.METRICS_FILE).read_text())
    return TrainResult(None, metrics, metrics.get("history", []), metrics.get("best_epoch", 0))


def _promote_best(run_dir: Path, methods, seeds, results) -> None:
    """The run's own model files: the first trained method's seed with the best validation top-1."""
    for method in methods:
        if method in BASELINES:
            continue
        best = max(range(len(seeds)), key=lambda i: results[method][i].metrics["val"]["top1"])
        unit = _unit_dir(run_dir, method, seeds[best], methods, seeds)
        for name in (WEIGHTS_FILE, META_FILE, "curves.png"):
            if (unit / name).is_file():
                shutil.copyfile(unit / name, run_dir / name)
        return


def _write_table(run_dir: Path, rows: list[dict]) -> None:
    import csv
    runs.write_json(run_dir / "compare.json", rows)
    keys = ["top1", "top5", "mean_per_class", "l0_mean", "nec", "coverage90_mean"]
    extra = sorted({k for row in rows for k in row if k.startswith(("concept_precision", "nec")) and k != "nec"})
    with open(run_dir / "compare.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        header = ["method"] + [f"{k}_{s}" for k in keys + extra for s in ("mean", "std")]
        writer.writerow(header)
        for row in rows:
            values = [row["method"]]
            for key in keys + extra:
                values += [row[key]["mean"], row[key]["std"]] if key in row else ["", ""]
            writer.writerow(values)


RECORD_FILE = "record.json"


def check_resumable(run_dir: Path, data: TrainingData) -> None:
    """Refuse to resume a run on another cache, backbone or concept set than it was started with."""
    import json
    path = Path(run_dir) / RECORD_FILE
    if not path.is_file():
        raise CbmctlError(f"{run_dir} is not a cbmctl run directory (no {RECORD_FILE})")
    _compare_records(run_dir, json.loads(path.read_text()), data.record)


def _compare_records(run_dir, recorded: dict, current: dict) -> None:
    checks = [("dataset", "dataset_fingerprint", "dataset"), ("backbone", "weights_sha256", "backbone"),
              ("concept_set", "sha256", "concept set")]
    for section, key, label in checks:
        if recorded.get(section, {}).get(key) != current.get(section, {}).get(key):
            raise CbmctlError(f"{run_dir} was trained with another {label} "
                              f"({str(recorded.get(section, {}).get(key))[:12]} vs "
                              f"{str(current.get(section, {}).get(key))[:12]}); start a new run instead")
