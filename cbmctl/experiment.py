"""One `cbmctl train` invocation: one or more methods × one or more seeds on the same TrainingData, every
CBM of it trained together (cbmctl.training.train_many), the seed-independent baselines once, written to a
run directory (cbmctl.runs) with a comparison that says which differences are larger than the seed noise.
The one module that joins training and the run directory: training keeps its checkpoint in the store it is
handed here (runs.CheckpointFiles), and everything it returns is written here."""
from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cbmctl import runs
from cbmctl.errors import CbmctlError
from cbmctl.identity import backbone_difference, concepts_difference, data_difference
from cbmctl.sanitize import safe_text
from cbmctl.spec import BASELINES, TrainConfig
from cbmctl.stats import holm, mean_interval, paired_difference
from cbmctl.training import TrainingData, TrainResult, describe, run_baseline, train_many

# the metrics a comparison summarises, in table order (percentages first); absent ones are skipped
SUMMARY_KEYS = ("top1", "dense_top1", "nec5_top1", "anec", "top5", "mean_per_class", "ece", "nec",
                "l0_mean", "entropy_mean", "top5_mass_mean", "hoyer_mean", "coverage90_mean", "cbl_change",
                "cbl_offdiagonal", "faithful_units")
REFERENCE = "none"


@dataclass
class ExperimentResult:
    run_dir: Path
    rows: list[dict]                    # one per method: label, per-metric mean/std/interval over seeds
    results: dict[str, list[TrainResult]] = field(default_factory=dict)


def _unit_dir(run_dir: Path, method: str, seed: int, methods: list[str], seeds: list[int]) -> Path:
    path = run_dir
    if len(methods) > 1:
        path = path / method
    if len(seeds) > 1:
        path = path / f"seed-{seed}"
    return path


def model_metadata(data: TrainingData, config: TrainConfig, result: TrainResult) -> dict:
    metrics = {k: result.metrics[k] for k in ("val", "test", "dense", "sparse", "anec") if k in result.metrics}
    return {"concepts": data.concepts, "classes": data.classes, "train_config": asdict(config),
            "method": describe(config), "metrics": metrics, **data.record, "versions": runs.versions()}


def run_experiment(data: TrainingData, base: TrainConfig, methods: list[str], seeds: list[int], run_dir: Path,
                   spec: dict, log=None, warn=None, started=None, figures: bool = True, device=None
                   ) -> ExperimentResult:
    """Train every method with every seed (resuming from the run's checkpoint when one is there). `log`
    gets progress lines, `warn` (`log` when not given) the warnings; train.log gets both. `started(run_dir)`
    is called once the run directory can be resumed (its config and record are written). Without `figures`
    no curves.png and sparsity.png are drawn (a benchmark of many runs has no use for them). `device`: the
    torch.device to train on (`base.device` resolved when not given). torch uses
    `base.threads` threads meanwhile, as the record says (cbmctl.threads); the caller's count is restored."""
    from cbmctl.threads import torch_threads
    with torch_threads(base.threads) as threads:
        return _run_experiment(data, base, methods, seeds, Path(run_dir), spec, log, warn, started, threads, figures,
                               device)


def _run_experiment(data: TrainingData, base: TrainConfig, methods: list[str], seeds: list[int], run_dir: Path,
                    spec: dict, log, warn, started, threads, figures, device) -> ExperimentResult:
    from cbmctl.logs import sayer
    log = sayer(log)
    warn = warn or log
    runs.write_yaml(run_dir / runs.CONFIG_FILE, spec)
    runs.write_json(run_dir / runs.RECORD_FILE, {**data.record, "threads": threads.as_record(),
                                                 "versions": runs.versions()})
    if started is not None:
        started(run_dir)
    with open(run_dir / runs.LOG_FILE, "a", encoding="utf-8") as log_file:
        def say(line: str) -> None:
            log_file.write(line + "\n")
            log_file.flush()
            log(line)

        def say_warning(line: str) -> None:
            log_file.write(line + "\n")
            log_file.flush()
            warn(line)

        say(f"torch: {threads.count} CPU thread{'s' * (threads.count != 1)} ({threads.reason})")
        if data.record.get("ground_truth"):
            say(f"concept precision: the ground truth is read through {safe_text(data.record['ground_truth'])}")
        members = [(method, seed) for method in methods if method not in BASELINES for seed in seeds]
        results: dict[str, list[TrainResult]] = {method: [] for method in methods}
        if members:
            say(f"== training {len(members)} model{'s' * (len(members) > 1)}: "
                + ", ".join(sorted({describe(base.for_method(m, 0)) for m, _ in members}))
                + f"; seed{'s' * (len(seeds) > 1)} {', '.join(map(str, seeds))}")
            trained = train_many(data, base, members, runs.CheckpointFiles(run_dir), say, say_warning, device)
            for (method, _), result in zip(members, trained):
                results[method].append(result)
        for method in methods:
            if method in BASELINES:
                say(f"== {method}" + (" (every L2 strength of the grid fitted together)"
                                       if method == "linear-probe" else ""))
                # a baseline does not depend on the seed: computed once, it stands for every seed
                results[method] = [run_baseline(data, method, say)] * len(seeds)
        for method in methods:
            for seed, result in zip(seeds, results[method]):
                config = base.for_method(method, seed)
                _write_unit(_unit_dir(run_dir, method, seed, methods, seeds), data, config, result)
            say(_result_line(method, seeds, results[method], base))
    rows = compare_rows(methods, seeds, results, base)
    if len(methods) * len(seeds) > 1:
        _promote_best(run_dir, methods, seeds, results)
    metrics = {"rows": rows, "record": data.record, "versions": runs.versions()}
    if len(methods) * len(seeds) == 1:
        metrics.update(results[methods[0]][0].metrics)
        metrics["history"] = results[methods[0]][0].history
    if figures:
        _write_figures(run_dir, data, methods, seeds, results, base)
    runs.write_json(run_dir / runs.METRICS_FILE, metrics)
    if len(methods) * len(seeds) > 1:
        from cbmctl.render import is_percent
        keys = [k for k in SUMMARY_KEYS if any(k in r for r in rows)] + _precision_keys(rows)
        runs.write_compare_table(run_dir, rows, keys, percent=[k for k in keys if is_percent(k)])
    runs.remove_checkpoint(run_dir)
    return ExperimentResult(run_dir, rows, results)


def _result_line(method: str, seeds: list[int], results: list[TrainResult], base: TrainConfig) -> str:
    """One line per method for train.log: each seed's test top-1, and which epoch it kept and why."""
    if method in BASELINES:
        return f"{method}: test top-1 {results[0].metrics['test']['top1']:.4f} (seed-independent)"
    parts = []
    for seed, result in zip(seeds, results):
        metrics = result.metrics
        why = "validation loss stopped falling" if metrics.get("stopped_early") else "epoch limit"
        parts.append(f"seed {seed}: test top-1 {metrics['test']['top1']:.4f}, kept epoch {metrics['best_epoch']} "
                     f"of {metrics['epochs_run']} ({why})")
    return f"{describe(base.for_method(method, seeds[0]))}: " + "; ".join(parts)


def _precision_keys(rows: list[dict]) -> list[str]:
    return sorted({k for row in rows for k in row if k.startswith(("concept_precision", "explanation_precision"))})


def compare_rows(methods: list[str], seeds: list[int], results: dict[str, list[TrainResult]],
                 base: TrainConfig) -> list[dict]:
    """Per method: every test metric's mean, std and 95 % interval over seeds; and, with several seeds and
    the plain CBM ('none') among the methods, each method's paired difference to it (same seeds, same
    split), marked significant by Holm's procedure over the methods compared."""
    rows = []
    for method in methods:
        # test-split metrics and the model's own (how the CBL moved), per seed
        tests = [{**r.metrics["test"], **r.metrics.get("model", {})} for r in results[method]]
        keys = [k for k, v in tests[0].items() if isinstance(v, (int, float)) and k != "images"]
        varies = method not in BASELINES
        row = {"method": describe(base.for_method(method, seeds[0])), "loss": method, "seeds": seeds}
        for key in keys:
            values = [t[key] for t in tests] if varies else [tests[0][key]]
            row[key] = mean_interval(values)
        rows.append(row)
    if REFERENCE in methods and len(seeds) > 1:
        reference = [r.metrics["test"] for r in results[REFERENCE]]
        for key in ("top1", "nec5_top1", "dense_top1"):
            if key not in reference[0]:
                continue
            differences = {}
            for method in methods:
                if method == REFERENCE or key not in results[method][0].metrics["test"]:
                    continue
                differences[method] = paired_difference([r.metrics["test"][key] for r in results[method]],
                                                        [t[key] for t in reference])
            significant = holm({m: d["p"] for m, d in differences.items()})
            for row, method in zip(rows, methods):
                if method in differences:
                    row.setdefault("vs_none", {})[key] = {**differences[method], "significant": significant[method]}
    return rows


def _write_unit(unit: Path, data: TrainingData, config: TrainConfig, result: TrainResult) -> None:
    unit.mkdir(parents=True, exist_ok=True)
    if result.model is not None:
        runs.save_model(unit, result.model, model_metadata(data, config, result),
                        {"concept_vectors": data.concept_vectors, "class_vectors": data.class_vectors})
    runs.write_json(unit / runs.METRICS_FILE, {**result.metrics, "history": result.history,
                                               "train_config": asdict(config)})


def _write_figures(run_dir: Path, data: TrainingData, methods, seeds, results, base: TrainConfig) -> None:
    from cbmctl.render import plot_activation_histograms, plot_curves, plot_sparsity
    trained = [m for m in methods if m not in BASELINES]
    if not trained:
        return
    dataset = data.record.get("dataset", {}).get("dataset_name", "")
    if len(trained) * len(seeds) == 1:
        plot_curves(run_dir / runs.CURVES_FILE, results[trained[0]][0].history,
                    f"{describe(base.for_method(trained[0], seeds[0]))}, seed {seeds[0]}, on {dataset}")
    else:
        plot_curves(run_dir / runs.CURVES_FILE,
                    {describe(base.for_method(m, seeds[0])): [r.history for r in results[m]] for m in trained},
                    f"training curves on {dataset}, seeds {', '.join(map(str, seeds))}")
    histograms = activation_histograms(data, methods, seeds, results, base)
    runs.write_activation_histograms(run_dir, histograms)
    plot_activation_histograms(run_dir / runs.ACTIVATIONS_PLOT, histograms,
                               f"how sparse the CBL activations are, per test image, on {dataset}")
    plot_sparsity(run_dir / runs.SPARSITY_FILE,
                  {describe(base.for_method(m, seeds[0])): [r.metrics for r in results[m]] for m in trained},
                  f"accuracy-sparsity path of the sparse head on {dataset}")


def activation_histograms(data: TrainingData, methods, seeds, results, base: TrainConfig, chunk: int = 8192) -> dict:
    """Per trained method, the per-image activation-sparsity measures on the test split as histograms summed
    over its seeds (cbmctl.metrics.sparsity_histograms)."""
    import torch

    from cbmctl import metrics as M
    features = data.features["test"]
    entries = {}
    for method in (m for m in methods if m not in BASELINES):
        totals = {name: [0] * M.SPARSITY_BINS for name in M.SPARSITY_MEASURES}
        for result in results[method]:
            model = result.model
            device = next(model.parameters()).device
            for start in range(0, len(features), chunk):
                with torch.no_grad():
                    activations, _ = model(data.scores(features[start:start + chunk].to(device)))
                for name, counts in M.sparsity_histograms(activations).items():
                    totals[name] = [a + b for a, b in zip(totals[name], counts)]
        entries[describe(base.for_method(method, seeds[0]))] = {"images": int(len(features)),
                                                                     "seeds": len(results[method]), **totals}
    return {"split": "test", "bins": M.SPARSITY_BINS,
            "measures": {name: text for name, (_, text) in M.SPARSITY_MEASURES.items()}, "methods": entries}


def _promote_best(run_dir: Path, methods, seeds, results) -> None:
    """The run's own model files: the first trained method's seed with the lowest validation loss."""
    for method in methods:
        if method in BASELINES:
            continue
        best = min(range(len(seeds)), key=lambda i: results[method][i].metrics["val"]["nll"])
        unit = _unit_dir(run_dir, method, seeds[best], methods, seeds)
        for name in (runs.WEIGHTS_FILE, runs.META_FILE):
            shutil.copyfile(unit / name, run_dir / name)
        return


def check_resumable(run_dir: Path, data: TrainingData) -> None:
    """Refuse to resume a run on another cache, backbone or concept set than it was started with."""
    path = Path(run_dir) / runs.RECORD_FILE
    if not path.is_file():
        raise CbmctlError(f"{run_dir} is not a cbmctl run directory (no {runs.RECORD_FILE})")
    recorded = runs.read_json(path, "record")
    recorded = recorded if isinstance(recorded, dict) else {}
    checks = [("dataset", data_difference, "dataset"), ("backbone", backbone_difference, "backbone"),
              ("concept_set", concepts_difference, "concept set")]
    for section, difference, label in checks:
        found = difference(recorded.get(section), data.record.get(section))
        if found:
            raise CbmctlError(f"{run_dir} was trained with another {label} ({found.recorded} vs {found.current}); "
                              "start a new run instead")


def evaluate_run(run_dir, device="auto", precision_k: int = 5, warn=None) -> dict:
    """Score a saved model (e.g. one edited by `explain --save-edited`) on its cache's val and test splits,
    and record the result in the run's evaluation.json (metrics.json is what training wrote, and stays).
    A run that cannot be written to is still scored: `warn` says that nothing was written."""
    from cbmctl import runs
    from cbmctl.backbones import resolve_device
    from cbmctl.cache import open_cache
    from cbmctl.concepts import ConceptSet
    from cbmctl.identity import data_difference
    from cbmctl.logs import sayer
    from cbmctl.spec import TrainConfig
    from cbmctl.training import evaluate_splits, prepare_data
    run_dir = Path(run_dir)
    model, meta = runs.load_model(run_dir)
    record = meta.get("concept_set") if isinstance(meta.get("concept_set"), dict) else {}
    concept_set = ConceptSet(str(record.get("name", "concepts")), meta["concepts"], str(record.get("source", "")))
    cache_path, recorded = meta.get("cache"), meta.get("dataset")
    if not isinstance(cache_path, str) or not Path(cache_path).is_file():
        raise CbmctlError(f"{run_dir}: its cache {cache_path!r} is missing; cannot evaluate")
    device = resolve_device(device)  # once: the concept encoder (when needed) and the scoring share it
    data = prepare_data(open_cache(cache_path), concept_set, device=device, warn=warn)
    if data_difference(recorded, data.record["dataset"]):
        raise CbmctlError(f"{cache_path} no longer holds the data {run_dir} was trained on")
    if precision_k > len(data.concepts):
        sayer(warn)(f"warning: `precision_k` {precision_k} is more than the {len(data.concepts)} concepts: "
                    f"precision@{len(data.concepts)} is reported instead")
        precision_k = len(data.concepts)
    metrics = evaluate_splits(model, data, TrainConfig(precision_k=precision_k), splits=("val", "test"), device=device)
    metrics["evaluated"] = {"edited": meta.get("edited"), "head": model.head_kind, "versions": runs.versions()}
    try:
        runs.write_json(run_dir / runs.EVALUATION_FILE, metrics)
    except (OSError, CbmctlError) as error:  # a read-only run, or a directory or pipe where the file belongs
        sayer(warn)(f"warning: nothing written: cannot write {run_dir / runs.EVALUATION_FILE} "
                    f"({getattr(error, 'strerror', None) or error})")
    return metrics
