"""The run directory, and the one owner of its file names and formats.

    runs/<timestamp>-<dataset>-<method>/
        config.yaml          every option, fully resolved (`cbmctl train --config` replays it)
        record.json          provenance: cache, backbone and weights hash, dataset fingerprint, concept set, versions
        metrics.json         results (per split, dense and sparse heads, the sparsity path, ...)
        evaluation.json      the latest `cbmctl train --evaluate` of the run's model (never metrics.json)
        model.safetensors    CBL, head, standardisation, and the concept/class text embeddings (tensors only)
        model.json           concepts, classes, head kind, training configuration, provenance, and the
                             model's identity: a hash over both files' meaningful parts, checked on load
        curves.png           training curves; sparsity.png: the accuracy-sparsity path of the sparse head
        activations.json     histograms of per-image activation sparsity (test split) per method; activations.png
        report.html          `cbmctl report`'s self-contained page (when written here)
        train.log            what was printed while training
        checkpoint.safetensors + checkpoint.json   while training (never a pickle)
        compare.json, compare.csv, <method>/seed-<n>/...   for several methods or seeds
    runs/latest -> the newest run

Everything read from a run directory is treated as untrusted: JSON and safetensors only, sizes bounded,
shapes and values checked; a damaged file is a one-line error."""
from __future__ import annotations

import json
import os
import platform
import sys
from datetime import datetime
from pathlib import Path

from cbmctl.errors import CbmctlError
from cbmctl.files import slug

CONFIG_FILE = "config.yaml"
RECORD_FILE = "record.json"
METRICS_FILE = "metrics.json"
EVALUATION_FILE = "evaluation.json"  # `train --evaluate`'s scores; metrics.json stays what training wrote
WEIGHTS_FILE = "model.safetensors"
META_FILE = "model.json"
CURVES_FILE = "curves.png"
SPARSITY_FILE = "sparsity.png"
ACTIVATIONS_FILE = "activations.json"  # histograms of per-image activation sparsity on the test split
ACTIVATIONS_PLOT = "activations.png"
REPORT_FILE = "report.html"  # `cbmctl report`'s page, when no other place is given
LOG_FILE = "train.log"
CHECKPOINT = "checkpoint"  # checkpoint.safetensors + checkpoint.json
COMPARE_JSON = "compare.json"
COMPARE_CSV = "compare.csv"
LATEST = "latest"
MAX_JSON_BYTES = 256 << 20


def versions() -> dict:
    """The versions a run was made with (read from the installed metadata: importing open_clip takes seconds)."""
    from importlib.metadata import PackageNotFoundError, version
    info = {"cbmctl": __import__("cbmctl").__version__, "python": sys.version.split()[0],
            "platform": platform.platform()}
    for name, package in (("torch", "torch"), ("open_clip", "open_clip_torch"), ("numpy", "numpy")):
        try:
            info[name] = version(package)
        except PackageNotFoundError:
            pass
    if "torch" in sys.modules:  # the build tag too (2.14.1+cu130), which the metadata omits
        info["torch"] = sys.modules["torch"].__version__
    return info


def check_writable(directory: Path, what: str = "runs") -> None:
    """A one-line error unless files can be created in `directory` (made when missing): found before any
    training, not as a traceback after it."""
    import tempfile
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise CbmctlError(f"cannot write {what} in {directory}: it is a file, not a directory")
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory, prefix=".cbmctl-write-test"):
            pass
    except OSError as error:
        raise CbmctlError(f"cannot write {what} in {directory}: {error.strerror or error}") from None


def new_run_dir(root: Path, dataset: str, label: str) -> Path:
    """A new, empty run directory: created (not merely found free) under its name, so that two trains
    starting in the same second into one runs folder each get their own (`...-2`), never the same one."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path(root) / f"{stamp}-{slug(dataset, 'run')}-{slug(label, 'run')}"
    base.parent.mkdir(parents=True, exist_ok=True)
    path, n = base, 1
    while True:
        try:
            path.mkdir()
            return path
        except FileExistsError:
            n += 1
            path = base.with_name(f"{base.name}-{n}")


def check_latest_free(root: Path) -> None:
    """A one-line error, before any training, when `root/latest` is something of the user's (a file, a folder)
    rather than absent or cbmctl's own link: repointing it would replace what is there."""
    link = Path(root) / LATEST
    if (link.exists() or link.is_symlink()) and not link.is_symlink():
        raise CbmctlError(f"{link} exists and is not cbmctl's link to the latest run; move it, or write the runs "
                          "somewhere else")


def point_latest(root: Path, run: Path) -> None:
    """Atomically repoint runs/latest at `run` (never over a file or folder of the user's)."""
    check_latest_free(root)
    link = Path(root) / LATEST
    tmp = Path(root) / f".latest.{os.getpid()}"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(Path(run).name)
    os.replace(tmp, link)


def resolve_run(spec: str | None, root: Path = Path("runs")) -> Path:
    """A run directory: the given path (a runs root holding `latest` means its latest run), or runs/latest."""
    path = Path(spec) if spec else Path(root) / LATEST
    if not path.exists():
        raise CbmctlError(f"{path}: no such run (train one with `cbmctl train`)" if spec else
                          f"no runs yet under {root} (train one with `cbmctl train`, or pass a run directory)")
    if path.is_dir() and not (path / META_FILE).exists() and (path / LATEST).exists():
        path = path / LATEST
    return path.resolve()


def resolve_interrupted_run(spec: str) -> Path:
    """The run `--resume` continues: the given run directory, or, for a folder of runs (a runs root, or an
    --out folder), its newest run that holds a checkpoint and has not finished (`latest` only ever points at
    finished runs)."""
    from cbmctl.files import in_use
    path = Path(spec)
    if not path.is_dir():
        raise CbmctlError(f"{path}: no such run directory")
    if (path / CONFIG_FILE).exists():
        if in_use(path):
            raise CbmctlError(f"{path} is in use: another cbmctl process is training it right now (it is not "
                              "interrupted); wait for it to finish")
        return path.resolve()
    candidates = sorted((child for child in path.iterdir() if child.is_dir() and not child.is_symlink()
                         and (child / CONFIG_FILE).is_file() and is_interrupted(child)), key=lambda child: child.name)
    if not candidates:
        raise CbmctlError(f"{path}: neither a run nor a folder holding an interrupted run (one with a checkpoint)")
    return candidates[-1].resolve()


def is_interrupted(run_dir: Path) -> bool:
    """A run that stopped before finishing and that no process is training now (it holds a checkpoint)."""
    from cbmctl.files import in_use
    return has_checkpoint(run_dir) and not is_finished(run_dir) and not in_use(run_dir)


def is_finished(run_dir: Path) -> bool:
    return (Path(run_dir) / METRICS_FILE).is_file() and not has_checkpoint(run_dir)


def has_checkpoint(run_dir: Path) -> bool:
    return any(Path(run_dir).rglob(f"{CHECKPOINT}.json"))


def write_json(path: Path, data) -> None:
    from cbmctl.files import write_text_atomic
    write_text_atomic(path, json.dumps(data, indent=1, default=str) + "\n")


def read_json(path: Path, what: str = "file") -> dict | list:
    """A run's JSON file, read as every input is (cbmctl.data_files: a regular file, size-capped)."""
    from cbmctl.data_files import read_bytes_capped
    path = Path(path)
    raw = read_bytes_capped(path, MAX_JSON_BYTES)
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as error:
        raise CbmctlError(f"{path}: not a readable {what} ({str(error).splitlines()[0][:80]})") from None
    except RecursionError:
        raise CbmctlError(f"{path}: not a readable {what} (nested too deeply)") from None


def read_metrics(run_dir: Path) -> dict:
    data = read_json(Path(run_dir) / METRICS_FILE, "metrics file")
    if not isinstance(data, dict):
        raise CbmctlError(f"{Path(run_dir) / METRICS_FILE}: expected a JSON object")
    return data


def write_yaml(path: Path, data) -> None:
    import yaml

    from cbmctl.files import write_text_atomic
    write_text_atomic(path, yaml.safe_dump(data, sort_keys=False, allow_unicode=True))


def read_yaml(path: Path, what: str = "config") -> dict:
    """A YAML mapping, size-capped and without aliases (cbmctl.data_files.load_yaml)."""
    from cbmctl.data_files import load_yaml
    data = load_yaml(Path(path)) or {}
    if not isinstance(data, dict):
        raise CbmctlError(f"{path}: the {what} must be a mapping of option names to values")
    return data


def save_model(directory: Path, model, metadata: dict, vectors: dict | None = None) -> None:
    """model.safetensors (weights and the text embeddings it was trained with) + model.json, each replaced
    atomically, the JSON last."""
    from safetensors.torch import save_file

    from cbmctl.files import atomic_path, write_text_atomic
    from cbmctl.model import model_identity, model_tensors
    directory = Path(directory)
    tensors = model_tensors(model, vectors)
    metadata = {**metadata, "head": model.head_kind}
    metadata["identity"] = model_identity(tensors, metadata)  # checked on every load (cbmctl.model)
    with atomic_path(directory / WEIGHTS_FILE) as tmp:
        save_file(tensors, str(tmp))
    write_text_atomic(directory / META_FILE, json.dumps(metadata, indent=1) + "\n")


def read_tensors(path: Path) -> dict:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from cbmctl.data_files import require_regular
    require_regular(path)
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise CbmctlError(f"{path} is damaged or not a safetensors file ({str(error).splitlines()[0][:80]})") \
            from None


def load_model(directory: Path):
    """(model, metadata) of a run; metadata["vectors"] holds the saved text embeddings."""
    from cbmctl.model import model_from_tensors
    directory = Path(directory)
    if not (directory / WEIGHTS_FILE).is_file() or not (directory / META_FILE).is_file():
        raise CbmctlError(f"{directory} holds no trained model ({WEIGHTS_FILE} + {META_FILE}); train or resume it "
                          "first")
    metadata = read_json(directory / META_FILE, "model description")
    return model_from_tensors(read_tensors(directory / WEIGHTS_FILE), metadata, str(directory))


def save_checkpoint(run_dir: Path, tensors: dict, plain: dict) -> None:
    """checkpoint.safetensors + checkpoint.json, each replaced atomically (the JSON last: it marks the pair)."""
    from safetensors.torch import save_file

    from cbmctl.files import atomic_path, write_text_atomic
    base = Path(run_dir) / CHECKPOINT
    with atomic_path(base.with_suffix(".safetensors")) as tmp:
        save_file(tensors, str(tmp))
    write_text_atomic(base.with_suffix(".json"), json.dumps(plain))


def load_checkpoint(run_dir: Path) -> tuple[dict, dict] | None:
    """(tensors, plain) of the run's checkpoint, or None when there is none. Nothing in it is executed."""
    base = Path(run_dir) / CHECKPOINT
    if not base.with_suffix(".json").is_file():
        return None
    plain = read_json(base.with_suffix(".json"), "checkpoint")
    if not isinstance(plain, dict) or "epoch" not in plain:
        raise CbmctlError(f"{base.with_suffix('.json')} is not a cbmctl checkpoint; remove it to restart the run")
    return read_tensors(base.with_suffix(".safetensors")), plain


class CheckpointFiles:
    """The checkpoint store a run hands training (cbmctl.training.checkpoint.CheckpointStore): the pair of
    files above in `run_dir`."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.where = str(self.run_dir / f"{CHECKPOINT}.json")

    def load(self) -> tuple[dict, dict] | None:
        return load_checkpoint(self.run_dir)

    def save(self, tensors: dict, plain: dict) -> None:
        save_checkpoint(self.run_dir, tensors, plain)


def remove_checkpoint(run_dir: Path) -> None:
    base = Path(run_dir) / CHECKPOINT
    base.with_suffix(".json").unlink(missing_ok=True)
    base.with_suffix(".safetensors").unlink(missing_ok=True)


def write_compare_table(run_dir: Path, rows: list[dict], keys: list[str], percent=()) -> None:
    """compare.json (every row as computed) and compare.csv (mean, std and 95 % interval of each key, and the
    paired differences to the plain CBM with their p-values and Holm-corrected significance). In the CSV the
    `percent` keys are in percent, as the printed table shows them, and their columns say so (`top1_mean_pct`;
    differences in percentage points, `_pp`); every other key is in its own unit (ECE, entropy, NEC ...)."""
    import csv
    import io

    from cbmctl.files import write_text_atomic
    write_json(Path(run_dir) / COMPARE_JSON, rows)
    text = io.StringIO()
    writer = csv.writer(text)
    columns = ("mean", "std", "ci_low", "ci_high")
    paired = sorted({key for row in rows for key in row.get("vs_none", {})})
    differences = ("mean", "ci_low", "ci_high", "p", "significant")

    def unit(key, statistic, scaled, suffix):
        return f"_{suffix}" if key in percent and statistic in scaled else ""

    def value(key, statistic, cell, scaled):
        number = cell.get(statistic, "")
        return round(100 * number, 6) if key in percent and statistic in scaled and isinstance(number, (int, float)) \
            and not isinstance(number, bool) else number
    writer.writerow(["method"] + [f"{k}_{s}{unit(k, s, columns, 'pct')}" for k in keys for s in columns]
                    + [f"{k}_vs_none_{s}{unit(k, s, differences[:3], 'pp')}" for k in paired for s in differences])
    for row in rows:
        values = [row["method"]]
        for key in keys:
            cell = row.get(key)
            values += [value(key, s, cell, columns) for s in columns] if isinstance(cell, dict) else [""] * len(columns)
        for key in paired:
            cell = row.get("vs_none", {}).get(key)
            values += [value(key, s, cell, differences[:3]) for s in differences] if cell else [""] * len(differences)
        writer.writerow(values)
    write_text_atomic(Path(run_dir) / COMPARE_CSV, text.getvalue())


MAX_HISTOGRAM_BINS = 1000
MAX_HISTOGRAM_METHODS = 100


def write_activation_histograms(run_dir: Path, histograms: dict) -> None:
    """activations.json: {"split", "bins", "measures": {name: description}, "methods": {label: {"images",
    "seeds", name: [count per bin of [0, 1]]}}} (cbmctl.metrics.sparsity_histograms, summed over seeds)."""
    write_json(Path(run_dir) / ACTIVATIONS_FILE, histograms)


def read_activation_histograms(run_dir: Path) -> dict | None:
    """A run's activation histograms, every value checked (a run may have been sent by anyone); None for a
    run made before they were recorded, a one-line error for a damaged file."""
    path = Path(run_dir) / ACTIVATIONS_FILE
    if not path.is_file():
        return None
    data = read_json(path, "activation histograms")

    def refuse(problem: str):
        raise CbmctlError(f"{path}: {problem}; the file is damaged (retrain the run to rewrite it)")
    if not isinstance(data, dict) or not isinstance(data.get("methods"), dict) or \
            not isinstance(data.get("measures"), dict):
        refuse("expected an object with 'measures' and 'methods'")
    bins = data.get("bins")
    if not isinstance(bins, int) or isinstance(bins, bool) or not 1 <= bins <= MAX_HISTOGRAM_BINS:
        refuse(f"'bins' must be a whole number in [1, {MAX_HISTOGRAM_BINS}]")
    measures = data["measures"]
    if not measures or not all(isinstance(k, str) and isinstance(v, str) for k, v in measures.items()):
        refuse("'measures' must name each measure with a description")
    if len(data["methods"]) > MAX_HISTOGRAM_METHODS:
        refuse(f"more than {MAX_HISTOGRAM_METHODS} methods")
    for label, entry in data["methods"].items():
        if not isinstance(entry, dict) or not all(_counts(entry.get(name), bins) for name in measures):
            refuse(f"method {str(label)[:40]!r}: each measure needs {bins} whole, non-negative counts")
    return data


def _counts(values, bins: int) -> bool:
    return isinstance(values, list) and len(values) == bins and all(
        isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2 ** 53 for v in values)
