"""Run directories: runs/<timestamp>-<dataset>-<loss>/ with config.yaml, metrics.json, model files,
curves.png and train.log; runs/latest points at the newest."""
from __future__ import annotations

import json
import os
import platform
import sys
from datetime import datetime
from pathlib import Path

from cbmctl.errors import CbmctlError

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.json"
LOG_FILE = "train.log"
CHECKPOINT_FILE = "checkpoint.pt"


def versions() -> dict:
    import torch
    info = {"cbmctl": __import__("cbmctl").__version__, "torch": torch.__version__,
            "python": sys.version.split()[0], "platform": platform.platform()}
    try:
        import open_clip
        info["open_clip"] = open_clip.__version__
    except ImportError:
        pass
    return info


def new_run_dir(root: Path, dataset: str, label: str) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path(root) / f"{stamp}-{_slug(dataset)}-{_slug(label)}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    path.mkdir(parents=True)
    return path


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "-" for c in str(text)).strip("-") or "run"


def point_latest(root: Path, run: Path) -> None:
    """Atomically repoint runs/latest at `run`."""
    link = Path(root) / "latest"
    tmp = Path(root) / f".latest.{os.getpid()}"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(Path(run).name)
    os.replace(tmp, link)


def resolve_run(spec: str | None, root: Path = Path("runs")) -> Path:
    """A run directory: the given path, or runs/latest."""
    path = Path(spec) if spec else Path(root) / "latest"
    if not path.exists():
        raise CbmctlError(f"{path}: no such run (train one with `cbmctl train`)" if spec else
                          f"no runs yet under {root} (train one with `cbmctl train`, or pass a run directory)")
    return path.resolve()


def write_json(path: Path, data) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str) + "\n")
    os.replace(tmp, path)


def write_yaml(path: Path, data) -> None:
    import yaml
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(yaml.safe_dump(data, sort_keys=False))
    os.replace(tmp, path)


def read_yaml(path: Path) -> dict:
    import yaml
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as error:
        raise CbmctlError(f"{path}: cannot read the config ({str(error).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise CbmctlError(f"{path}: the config must be a mapping of option names to values")
    return data


def plot_curves(path: Path, history: list[dict], title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    epochs = [h["epoch"] for h in history]
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    left.plot(epochs, [h["loss"] for h in history], label="total")
    left.plot(epochs, [h["cbl_loss"] for h in history], label="CBL objective")
    left.plot(epochs, [h["ce"] for h in history], label="cross-entropy")
    left.set_xlabel("epoch")
    left.set_ylabel("training loss")
    left.legend()
    right.plot(epochs, [h["train_top1"] for h in history], label="train")
    right.plot(epochs, [h["val_top1"] for h in history], label="validation")
    right.set_xlabel("epoch")
    right.set_ylabel("top-1 accuracy")
    right.set_ylim(0, 1)
    right.legend()
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
