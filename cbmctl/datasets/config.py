"""`cbmctl.yaml` in a dataset directory: defaults that every command honours (flags win)."""
from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

from cbmctl.errors import CbmctlError

FILE_NAME = "cbmctl.yaml"


@dataclass
class DatasetConfig:
    model: str | None = None
    pretrained: str | None = None
    concepts: str | None = None
    format: str | None = None
    # a list in label order, or a mapping {name as read: name to use}
    class_names: list | dict | None = None
    templates: list | None = None
    val_fraction: float | None = None
    val_seed: int | None = None


def load_config(directory: Path) -> DatasetConfig:
    path = Path(directory) / FILE_NAME
    if not path.is_file():
        return DatasetConfig()
    import yaml
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as error:
        raise CbmctlError(f"{path}: not valid YAML ({str(error).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise CbmctlError(f"{path}: expected a mapping of settings")
    known = {f.name for f in fields(DatasetConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise CbmctlError(f"{path}: unknown setting {unknown[0]!r} (known: {', '.join(sorted(known))})")
    config = DatasetConfig(**data)
    if isinstance(config.concepts, str) and (Path(directory) / config.concepts).is_file():
        # a concept file beside cbmctl.yaml (e.g. a demo world's concepts/), whatever the working directory
        config.concepts = str((Path(directory) / config.concepts).resolve())
    return config


def apply_class_names(classes: list[str], override, source: Path) -> list[str]:
    if override is None:
        return classes
    if isinstance(override, list):
        if len(override) != len(classes):
            raise CbmctlError(f"{source}: class_names lists {len(override)} names for {len(classes)} classes")
        return [str(name) for name in override]
    if isinstance(override, dict):
        unknown = sorted(set(override) - set(classes))
        if unknown:
            raise CbmctlError(f"{source}: class_names renames {unknown[0]!r}, which is not a class")
        return [str(override.get(name, name)) for name in classes]
    raise CbmctlError(f"{source}: class_names must be a list or a mapping")


def backbone_choice(model: str | None, pretrained: str | None, config: DatasetConfig, default_model: str):
    """Flags win over cbmctl.yaml; the file's `pretrained` only applies to the file's own `model`."""
    chosen = model or config.model or default_model
    if pretrained is None and config.pretrained is not None and chosen == (config.model or default_model):
        pretrained = str(config.pretrained)
    return chosen, pretrained
