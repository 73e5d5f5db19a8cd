"""What a command will read or write, decided before torch or open_clip is imported (that import alone
takes seconds): the dataset, the backbone, the cache file, whether that cache is already the right one, and
the concept set (resolve_concepts, which cbmctl.pipeline uses too: imports run from pipeline to here only).

Every mistake found here is a one-line CbmctlError in well under a second: an unknown dataset name or
path, a model-config file or zoo tag that does not exist, weights that are neither on disk nor reachable,
a --model/--pretrained/--template that contradicts the cache it would use. A rerun of a finished embed is
answered from the cache's record (dataset fingerprint, model, pretrained tag, weights hash, package
versions that fix the preprocessing, templates) without loading a model."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from cbmctl.errors import CbmctlError
from cbmctl.files import require_replaceable

CACHE_SUFFIXES = (".h5", ".hdf5")


@dataclass
class CachePlan:
    """The outcome of plan_cache.

    state: "given"      a cache file was named (CACHE, or --cache without DATA): use it as it is
           "up-to-date" DATA's cache exists and certainly holds this backbone's embeddings of this data
           "usable"     DATA's cache exists and agrees with every part of the request that can be told
                        without loading the backbone (e.g. hf-hub weights): use it, or load the backbone
                        to confirm before writing
           "missing"    DATA's cache does not exist (or --overwrite): it must be embedded; the weights were
                        checked to be on disk or reachable"""

    cache: Path
    state: str
    config: object  # DatasetConfig
    dataset: object = None  # Dataset, when DATA was given
    model: str | None = None
    pretrained: str | None = None
    templates: list[str] = field(default_factory=list)
    request: object = None  # BackboneRequest
    warnings: list[str] = field(default_factory=list)
    explicit_cache: bool = False  # named with --cache (else the default path for DATA and the backbone)

    @property
    def notes(self) -> list[str]:
        return list(getattr(self.dataset, "notes", []) or [])


def names_cache(spec) -> bool:
    # any .h5 that exists but a folder (a pipe too: opening it then says what it is, rather than "not a dataset")
    return bool(spec) and str(spec).endswith(CACHE_SUFFIXES) and Path(spec).exists() and not Path(spec).is_dir()


def _flags(model, pretrained, templates=None) -> str:
    parts = [f"--model {model}" if model else "", f"--pretrained {pretrained}" if pretrained else "",
             "--template ..." if templates else ""]
    return " ".join(p for p in parts if p)


def checked_templates(templates, where: str = "`templates`") -> list[str] | None:
    """Class-prompt templates as a list of strings, each with one '{}' for the class name; a template that
    would fail (or give every class the same prompt) is a one-line error now rather than after the backbone
    has loaded."""
    if templates is None:
        return None
    if isinstance(templates, str):
        templates = [templates]
    if not isinstance(templates, (list, tuple)) or not templates:
        raise CbmctlError(f"{where}: expected a list of templates such as 'a photo of a {{}}.'")
    for template in templates:
        try:
            ok = isinstance(template, str) and template.format("\0") != template and \
                template.replace("{}", "").format() is not None
        except (IndexError, KeyError, ValueError):
            ok = False
        if not ok:
            raise CbmctlError(f"{where}: {template!r} is not a class-prompt template: it needs exactly the "
                              f"placeholder {{}} for the class name, e.g. 'a photo of a {{}}.'")
    return list(templates)


def _refuse_conflicts(cache_file, attrs: dict, request, hint: str) -> None:
    from cbmctl.sanitize import safe_text
    conflicts = request.conflicts(attrs)
    if conflicts:
        what, has, asked = conflicts[0]
        key = {"model": "backbone_model", "model config": "backbone_model", "pretrained": "backbone_pretrained",
               "weights sha256": "weights_sha256"}[what]
        raise CbmctlError(f"{cache_file} was made with {key}={safe_text(has)} but this run has {asked}; {hint}")


def _backbone_warning(attrs_or_model, pretrained, classes, dataset_name) -> list[str]:
    from cbmctl.backbones import meaningless_backbone
    line = meaningless_backbone(str(attrs_or_model), pretrained, classes, dataset_name)
    return [line] if line else []


def _plan_given(cache_file, model, pretrained, templates) -> CachePlan:
    """CACHE named directly: flags may only repeat what it holds."""
    from cbmctl.backbones import backbone_request
    from cbmctl.cache import open_cache
    from cbmctl.datasets import DatasetConfig, load_config
    from cbmctl.embed import template_mismatch, templates_of
    cache = open_cache(cache_file)
    attrs = cache.attrs
    hint = (f"leave out {_flags(model, pretrained, templates)} to use this cache as it is, or give the dataset "
            f"(DATA) instead to embed it with that backbone")
    if model or pretrained:
        request = backbone_request(model or str(attrs["backbone_model"]), pretrained)
        if pretrained is None:  # a model alone names the cache's backbone family, not a default tag
            request.pretrained, request.weights_sha256 = None, None
        _refuse_conflicts(cache.path, attrs, request, hint)
    if templates and templates_of(attrs) != list(templates):
        raise CbmctlError(template_mismatch(cache.path, templates_of(attrs), list(templates), hint))
    root = Path(str(attrs["dataset_root"]))
    config = load_config(root) if root.is_dir() else DatasetConfig()
    return CachePlan(cache.path, "given", config, model=str(attrs["backbone_model"]),
                     pretrained=str(attrs["backbone_pretrained"]), templates=templates_of(attrs),
                     warnings=_backbone_warning(attrs["backbone_model"], attrs["backbone_pretrained"],
                                                cache.classes, str(attrs["dataset_name"])))


def check_existing(plan: CachePlan, spec, overwrite) -> CachePlan:
    """Compare DATA's existing cache with the plan's dataset, backbone and templates: a contradiction is an
    error that says how to proceed; otherwise the plan's state becomes "up-to-date" or "usable"."""
    from cbmctl.cache import CacheLocked, CacheNeedsRebuild, open_cache
    from cbmctl.embed import template_mismatch, templates_of
    from cbmctl.identity import data_difference
    embed = " ".join(filter(None, ["cbmctl embed", str(spec), f"--cache {plan.cache}" if plan.explicit_cache else "",
                                   _flags(plan.model, plan.pretrained), "--overwrite"]))
    hint = ("pass `overwrite` to rebuild it, or another `cache_path`" if overwrite is not None else
            f"rebuild it with `{embed}`, or pass another `cache_path`")
    try:
        cache = open_cache(plan.cache)
    except (CacheLocked, CacheNeedsRebuild):
        raise  # its message says what to do already
    except CbmctlError as error:
        raise CbmctlError(f"{error}; {hint}") from None
    attrs = cache.attrs
    other_data = data_difference(attrs, {"dataset_fingerprint": plan.dataset.fingerprint()})
    if other_data:
        raise CbmctlError(f"{plan.cache} was made with {other_data.field}={other_data.recorded} but this run has "
                          f"{other_data.current} (the data changed since); {hint}")
    _refuse_conflicts(plan.cache, attrs, plan.request, hint)
    if templates_of(attrs) != plan.templates:
        raise CbmctlError(template_mismatch(plan.cache, templates_of(attrs), plan.templates, hint))
    plan.state = "up-to-date" if plan.request.settles(attrs) else "usable"
    return plan


def plan_cache(spec, *, model=None, pretrained=None, templates=None, cache_path=None, data_root=None,
               format=None, val_fraction=None, val_seed=None, overwrite: bool | None = None,
               allow_outside_root: bool = False) -> CachePlan:
    """Resolve DATA (a dataset folder, manifest or known name) or CACHE (an .h5 file) without importing torch
    or open_clip, and check everything that can be checked: see the module docstring.

    `templates`: class-prompt templates asked for on the command line (None: the dataset's cbmctl.yaml, else
    the default). `overwrite`: None for commands that cannot rebuild a cache (train, cms: messages then name
    `cbmctl embed ... --overwrite`), else the embed command's --overwrite. `allow_outside_root`: the
    user's --allow-outside-root (listed image paths outside the dataset root are refused without it)."""
    from cbmctl.backbones import DEFAULT_MODEL, backbone_request, check_weights_reachable
    from cbmctl.datasets import load_config, load_dataset, resolve_dataset_path
    from cbmctl.datasets.config import backbone_choice
    from cbmctl.embed import DEFAULT_TEMPLATES, default_cache_path
    if not spec and not cache_path:
        raise CbmctlError("give DATA (a dataset folder, manifest or known name) or a cache file")
    templates = checked_templates(list(templates) if templates else None)
    if names_cache(spec) or (not spec and cache_path):
        return _plan_given(spec if spec else cache_path, model, pretrained, templates)
    path = resolve_dataset_path(str(spec), data_root)
    config = load_config(path if path.is_dir() else path.parent)
    config.templates = checked_templates(config.templates, f"{path / 'cbmctl.yaml'}: templates")
    dataset = load_dataset(path, format=format, val_fraction=val_fraction, val_seed=val_seed, config=config,
                           allow_outside_root=allow_outside_root)
    model, pretrained = backbone_choice(model, pretrained, config, DEFAULT_MODEL)
    request = backbone_request(model, pretrained)
    plan = CachePlan(Path(cache_path or default_cache_path(dataset, model, pretrained)), "missing", config,
                     dataset, model, pretrained, list(templates or config.templates or DEFAULT_TEMPLATES), request)
    plan.explicit_cache = bool(cache_path)
    plan.warnings = _backbone_warning(model, request.pretrained or pretrained, dataset.classes, dataset.name)
    require_replaceable(plan.cache)  # found before torch, and never a rebuild hint for a pipe or device
    if plan.cache.exists() and not overwrite:
        check_existing(plan, spec, overwrite)
    if plan.state == "missing":
        # the default tag too (request.pretrained: the model's first tag when none was given), before any
        # "embedding ..." line and before torch
        check_weights_reachable(model, request.pretrained or pretrained)
    return plan


def run_names(run_dir) -> tuple[list[str], list[str]] | None:
    """(concepts, classes) as a run's model.json lists them, read without torch; None when they cannot be read
    (loading the model later says what is wrong with the file)."""
    from cbmctl.runs import META_FILE, read_json
    try:
        metadata = read_json(Path(run_dir) / META_FILE, "model description")
    except CbmctlError:
        return None
    names = [metadata.get(key) if isinstance(metadata, dict) else None for key in ("concepts", "classes")]
    if not all(isinstance(n, list) and all(isinstance(x, str) for x in n) for n in names):
        return None
    return names[0], names[1]


def check_run_names(run_dir, concepts=(), classes=()) -> None:
    """Every concept and class name given on the command line is one of the run's (case ignored), or a
    one-line error with the closest name — found before torch loads."""
    from cbmctl.sanitize import safe_text
    from cbmctl.suggest import did_you_mean
    names = run_names(run_dir)
    if names is None:
        return
    known_concepts, known_classes = names
    for name, known, message in [(n, known_concepts, "concept {!r} is not in the run's concept set") for n in concepts] + \
            [(n, known_classes, f"`class_name` {{!r}} is not one of the run's {len(known_classes)} classes") for n in classes]:
        if name.strip().lower() not in {k.lower() for k in known}:
            raise CbmctlError(safe_text(message.format(name)) + did_you_mean(name, known))


def check_images_exist(images) -> None:
    """A one-line error when not one of the image paths exists (nothing could be explained); when some
    exist, the others are reported one by one after the work, as unreadable images are."""
    from cbmctl.sanitize import safe_text
    images = list(images)
    if images and not any(Path(image).exists() for image in images):
        first = safe_text(images[0])
        raise CbmctlError(f"{first}: file not found" if len(images) == 1 else
                          f"none of the {len(images)} images exists (first: {first}: file not found)")


def resolve_concepts(concepts: str | None, config, cache):
    """The concept set: --concepts, else the dataset's cbmctl.yaml, else the built-in set named like the
    dataset. A NAME that is neither a file nor a built-in set may name one of the dataset's own sets: a
    demo world's (clean, distractors, noisy, llm, as its world.json records them), or `concepts/NAME.txt` beside
    its cbmctl.yaml."""
    from cbmctl.concepts import builtin_sets, load_concept_set
    name = concepts or config.concepts
    if name is not None and not Path(str(name)).expanduser().is_file() and str(name) not in builtin_sets():
        name = _dataset_concept_set(str(name), cache) or name
    if name is None:
        dataset_name = str(cache.attrs.get("dataset_name", "")).lower()
        guess = {"cub_200_2011": "cub"}.get(dataset_name, dataset_name)
        if guess in builtin_sets():
            name = guess
    if name is None:
        raise CbmctlError("no concept set: name one with `concepts` (a built-in set, see `cbmctl concepts list`, "
                          "or a file) or set 'concepts:' in the dataset's cbmctl.yaml")
    path = Path(str(name)).expanduser()
    if not (path.is_file() or os.path.lexists(path)) and str(name) not in builtin_sets():
        _refuse_unknown_set(str(name), cache)
    return load_concept_set(str(name))


def _refuse_unknown_set(name: str, cache) -> None:
    """A concept set that is no file, no built-in set and none of the dataset's own: one line naming both
    kinds, with the closest name of either."""
    from cbmctl.concepts import builtin_sets
    from cbmctl.sanitize import safe_text
    from cbmctl.suggest import did_you_mean
    own = _dataset_set_names(cache)
    builtin = sorted(builtin_sets())
    raise CbmctlError(f"concept set {safe_text(repr(name))[:200]}: no such file, not a built-in set "
                      f"({', '.join(builtin) or 'none'})"
                      + (f" and not one of this dataset's own ({safe_text(', '.join(own))[:300]})" if own else "")
                      + did_you_mean(name, builtin + own))


def _dataset_set_names(cache, most: int = 50) -> list[str]:
    """The names of the dataset's own concept sets: a demo world's (world.json) and concepts/NAME.txt."""
    root, sets = _world_concept_sets(cache)
    if root is None:
        return []
    names = [str(key) for key in sets][:most]
    if (root / "concepts").is_dir():
        names += sorted(p.stem for p in (root / "concepts").glob("*.txt"))[:most]
    return sorted(set(names))[:most]


def _world_concept_sets(cache) -> tuple[Path | None, dict]:
    """(the dataset's root, or None where it is not a folder here; the concept sets its world.json records,
    {} when it has none or cannot be read)."""
    from cbmctl.data_files import load_json
    root = Path(str(cache.attrs.get("dataset_root", "")))
    if not root.is_dir():
        return None, {}
    record = None
    if (root / "world.json").is_file():
        try:
            record = load_json(root / "world.json")
        except CbmctlError:
            record = None
    sets = record.get("concept_sets") if isinstance(record, dict) else None
    return root, sets if isinstance(sets, dict) else {}


def _dataset_concept_set(name: str, cache) -> str | None:
    from cbmctl.concepts import builtin_sets
    root, sets = _world_concept_sets(cache)
    if root is None:
        return None
    entry = sets.get(name)
    if isinstance(entry, dict) and isinstance(entry.get("concepts"), str):
        named = entry["concepts"]
        if named in builtin_sets():
            return named
        inside = (root / named).resolve()
        if inside.is_relative_to(root.resolve()) and inside.is_file():  # a world's record names its own files only
            return str(inside)
    beside = root / "concepts" / f"{name}.txt"
    return str(beside) if beside.is_file() else None


class _Recorded:
    """What resolve_concepts reads of a cache (its attributes), for a cache that is not embedded yet."""

    def __init__(self, dataset):
        self.attrs = {"dataset_root": str(dataset.root), "dataset_name": dataset.name}


def check_concepts(concepts, plan: CachePlan) -> None:
    """The concept set `--concepts` (or the dataset's default) names exists — a built-in set, a file, or one of
    the dataset's own — decided before torch loads and before any embedding, not after them."""
    if plan.cache.is_file() and plan.state != "missing":
        from cbmctl.cache import open_cache
        resolve_concepts(concepts, plan.config, open_cache(plan.cache))
    elif plan.dataset is not None:
        resolve_concepts(concepts, plan.config, _Recorded(plan.dataset))
