"""`cbmctl.yaml` in a dataset directory: defaults that every command honours (flags win)."""
from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

from cbmctl.errors import CbmctlError
from cbmctl.sanitize import safe_text

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


def _text(value) -> bool:
    return isinstance(value, str) and value.strip() != ""


def valid_template(template) -> bool:
    """A prompt template with exactly one `{}` and no other braces: str.format would otherwise fail on
    `{name}`, or reach into the class name's attributes with `{0.__class__}`."""
    return _text(template) and template.count("{}") == 1 and not set(template.replace("{}", "")) & set("{}")


def _setting(path: Path, key: str, value):
    """A setting converted to its type, or a one-line error (YAML reads `1e-3` as text, `0.1` as a float)."""
    if value is None:
        return None
    if key in ("model", "pretrained", "concepts", "format"):
        if not _text(value):
            raise CbmctlError(f"{safe_text(path)}: {key} must be text, not {str(value)[:40]!r}")
        return value
    if key == "templates":
        if not isinstance(value, list) or not value or not all(valid_template(t) for t in value):
            raise CbmctlError(f"{safe_text(path)}: templates must be a list of texts, each with one {{}} for the "
                              "class name and no other braces")
        return value
    if key == "class_names":
        if not isinstance(value, (list, dict)):
            raise CbmctlError(f"{safe_text(path)}: class_names must be a list or a mapping")
        names = value if isinstance(value, list) else list(value) + list(value.values())
        bad = [n for n in names if not _text(n) and (isinstance(n, bool) or not isinstance(n, int))]
        if bad:
            bad = bad[0]
            raise CbmctlError(f"{safe_text(path)}: class_names holds {str(bad)[:40]!r}, which is not a class name")
        return value
    if key == "val_seed":
        if isinstance(value, bool) or not isinstance(value, int):
            raise CbmctlError(f"{safe_text(path)}: val_seed must be a whole number, not {str(value)[:40]!r}")
        return value
    try:  # val_fraction
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if isinstance(value, bool) or not 0 <= number <= 0.9:
        raise CbmctlError(f"{safe_text(path)}: val_fraction must be a number from 0 to 0.9, not {str(value)[:40]!r}")
    return number


def load_config(directory: Path) -> DatasetConfig:
    path = Path(directory) / FILE_NAME
    if not path.is_file():
        return DatasetConfig()
    from cbmctl.data_files import load_yaml
    data = load_yaml(path)
    if data is None:
        return DatasetConfig()
    if not isinstance(data, dict):
        raise CbmctlError(f"{safe_text(path)}: expected a mapping of settings")
    known = {f.name for f in fields(DatasetConfig)}
    unknown = sorted(set(map(str, data)) - known)
    if unknown:
        raise CbmctlError(f"{safe_text(path)}: unknown setting {unknown[0]!r} (known: {', '.join(sorted(known))})")
    config = DatasetConfig(**{key: _setting(path, key, value) for key, value in data.items()})
    if isinstance(config.concepts, str) and (Path(directory) / config.concepts).is_file():
        # a concept file beside cbmctl.yaml (e.g. a demo world's concepts/), whatever the working directory
        config.concepts = str((Path(directory) / config.concepts).resolve())
    return config


def apply_class_names(classes: list[str], override, source: Path) -> list[str]:
    from cbmctl.names import validate_class_names
    if override is None:
        return classes
    if isinstance(override, list):
        if len(override) != len(classes):
            raise CbmctlError(f"{safe_text(source)}: class_names lists {len(override)} names for {len(classes)} classes")
        return validate_class_names([str(name) for name in override], source)
    if isinstance(override, dict):
        override = {str(name): str(new) for name, new in override.items()}
        unknown = sorted(set(override) - set(classes))
        if unknown:
            raise CbmctlError(f"{safe_text(source)}: class_names renames {unknown[0]!r}, which is not a class")
        return validate_class_names([override.get(name, name) for name in classes], source)
    raise CbmctlError(f"{safe_text(source)}: class_names must be a list or a mapping")


def backbone_choice(model: str | None, pretrained: str | None, config: DatasetConfig, default_model: str):
    """Flags win over cbmctl.yaml; the file's `pretrained` only applies to the file's own `model`."""
    chosen = model or config.model or default_model
    if pretrained is None and config.pretrained is not None and chosen == (config.model or default_model):
        pretrained = str(config.pretrained)
    return chosen, pretrained
