"""open_clip's zoo and the Hugging Face hub, offline first: the tag index (which weights file a zoo tag
names, readable before open_clip is imported), the HF cache, and missing weights diagnosed in about a
second with the fix in one line."""
from __future__ import annotations

import json
import os
from pathlib import Path

from cbmctl.backbones.model_names import (
    HF_HUB_PREFIX,
    LOCAL_DIR_PREFIX,
    ModelKind,
    ModelName,
    WeightsKind,
    WeightsName,
    parse_model_name,
    parse_weights,
)
from cbmctl.errors import CbmctlError
from cbmctl.network import offline_requested, reachable

HF_HOST = "huggingface.co"


def _offline_fix(what: str, where: str) -> CbmctlError:
    reason = "HF_HUB_OFFLINE is set" if offline_requested() else f"{HF_HOST} is unreachable"
    return CbmctlError(f"{what} is not in the HF cache and {reason}: go online once, or place {where} in the "
                       f"HF cache ($HF_HOME/hub), or pass `pretrained` /path/to/weights.safetensors")


def hf_cache_dir() -> str:
    # read at call time: huggingface_hub freezes its defaults when first imported
    home = os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface")
    return os.environ.get("HF_HUB_CACHE") or os.path.join(home, "hub")


def _cached_hub_file(repo_id: str, filenames) -> str | None:
    from huggingface_hub import try_to_load_from_cache
    for filename in filenames:
        found = try_to_load_from_cache(repo_id, filename, cache_dir=hf_cache_dir())
        if isinstance(found, str) and os.path.isfile(found):
            return found
    return None


def _hub_files(hub: str) -> tuple[str, list[str]]:
    """(repo id, weight file names to look for) of an open_clip hf_hub entry: 'org/repo/' means the
    default file name, 'org/repo/file' names it; safetensors alternatives come first."""
    from open_clip.pretrained import HF_WEIGHTS_NAME, _get_safe_alternatives
    repo_id, filename = os.path.split(hub)
    filename = filename or HF_WEIGHTS_NAME
    return repo_id, list(_get_safe_alternatives(filename)) + [filename]


def _tag_index_paths() -> list[Path]:
    from cbmctl.files import cbmctl_home
    return [cbmctl_home() / "open_clip-tags.json", Path(__file__).parent.parent / "open_clip_tags.json"]  # the shipped one


def write_tag_index(path: Path) -> None:
    """open_clip's tag registry as JSON (model -> tag -> hub repo and files, or URL), so that a missing
    weights file can be diagnosed before torch and open_clip are imported (that import alone takes seconds)."""
    import importlib.metadata

    import open_clip
    tags: dict[str, dict] = {}
    for name, tag in open_clip.list_pretrained():
        cfg = open_clip.get_pretrained_cfg(name, tag)
        entry = {"url": cfg.get("url", "")}
        if cfg.get("hf_hub"):
            entry["repo"], entry["files"] = _hub_files(cfg["hf_hub"])
        tags.setdefault(name, {})[tag] = entry
    # the configs open_clip ships (list_models() would also hold configs registered in this process)
    shipped = sorted(p.stem for p in (Path(open_clip.__file__).parent / "model_configs").glob("*.json"))
    payload = {"open_clip": importlib.metadata.version("open_clip_torch"), "tags": tags, "models": shipped}
    from cbmctl.files import write_text_atomic
    write_text_atomic(path, json.dumps(payload))


def installed_version(package: str) -> str | None:
    import importlib.metadata
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def read_index() -> dict | None:
    version = installed_version("open_clip_torch")
    if version is None:
        return None
    for path in _tag_index_paths():
        try:
            payload = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(payload, dict) and payload.get("open_clip") == version:
            return payload
    return None


def _read_tag_index() -> dict | None:
    payload = read_index()
    return payload["tags"] if payload else None


def ensure_tag_index() -> None:
    """Write the tag index for the installed open_clip when there is none (open_clip is imported by then)."""
    if _read_tag_index() is None:
        write_tag_index(_tag_index_paths()[0])


def normalise_tag(tag: str) -> str:
    """A zoo tag as open_clip looks it up (case and '-' do not matter)."""
    return str(tag).lower().replace("-", "_")


def _url_cache_file(what: str, url: str) -> str | None:
    """open_clip's cache file for a weights URL when it is on disk; else None when the URL's host is reachable,
    and the fix in one line when it is not."""
    cached = Path.home() / ".cache" / "clip" / os.path.basename(url)
    if cached.is_file():
        return str(cached)
    host = url.split("/")[2]
    if not reachable(host):
        raise CbmctlError(f"{what} weights are not in ~/.cache/clip and {host} is unreachable: go online once, or "
                          f"place {cached.name} there, or pass `pretrained` /path/to/weights")
    return None


def tag_weights(name: str, tag_cfg: dict, tag: str) -> str:
    """A local file for a zoo tag: the HF cache or open_clip's URL cache first, the network only if reachable."""
    from open_clip.pretrained import download_pretrained
    hub = tag_cfg.get("hf_hub", "")
    if hub:
        repo_id, candidates = _hub_files(hub)
        found = _cached_hub_file(repo_id, candidates)
        if found:
            return found
        if not reachable(HF_HOST):
            raise _offline_fix(f"{name}/{tag}", f"{' or '.join(candidates)} of {repo_id}")
    elif tag_cfg.get("url"):
        found = _url_cache_file(f"{name}/{tag}", tag_cfg["url"])
        if found:
            return found
    try:
        return download_pretrained(tag_cfg, cache_dir=hf_cache_dir() if hub else None)
    except Exception as error:  # network failures come in many types; the user needs one line
        raise CbmctlError(f"could not download {name}/{tag}: {str(error).splitlines()[0]}") from None


def hub_model_name(repo_id: str) -> str:
    """The name open_clip builds an hf-hub repo by: its local copy when the HF cache holds it, else the hub
    (when reachable)."""
    config = _cached_hub_file(repo_id, ["open_clip_config.json"])
    if config:
        weights = Path(config).parent
        if any(weights.glob("*.safetensors")) or any(weights.glob("*.bin")):
            return f"{LOCAL_DIR_PREFIX}{weights}"
    if not reachable(HF_HOST):
        raise _offline_fix(f"{HF_HUB_PREFIX}{repo_id}", "open_clip_config.json and its weights")
    return f"{HF_HUB_PREFIX}{repo_id}"


def zoo_weights_file(entry: dict) -> str | None:
    """The local file `tag_weights` would load for a zoo tag's index entry, when it is on disk."""
    if entry.get("repo"):
        return _cached_hub_file(entry["repo"], entry["files"])
    if entry.get("url"):
        cached = Path.home() / ".cache" / "clip" / os.path.basename(entry["url"])
        return str(cached) if cached.is_file() else None
    return None


def known_zoo() -> set[str] | None:
    """The model names open_clip ships, from the tag index; None when there is no index for the installed
    open_clip (then only open_clip itself can tell)."""
    index = read_index()
    return set(index["models"]) if index and "models" in index else None


def check_reachable(model: ModelName, weights: WeightsName) -> None:
    """Fail in well under a second, before importing torch, when an hf-hub repo or a zoo tag's weights are
    neither on disk nor reachable. Silent whenever it cannot tell (no index for this open_clip, a file...)."""
    if model.kind is ModelKind.HF_HUB:
        hub_model_name(model.target)  # raises when neither cached nor reachable
        return
    if model.kind is not ModelKind.ZOO or weights.kind is not WeightsKind.TAG:
        return
    entry = (_read_tag_index() or {}).get(model.target, {}).get(normalise_tag(weights.text))
    if not entry:
        return
    if entry.get("repo"):
        if _cached_hub_file(entry["repo"], entry["files"]) or reachable(HF_HOST):
            return
        raise _offline_fix(f"{model.text}/{weights.text}", f"{' or '.join(entry['files'])} of {entry['repo']}")
    if entry.get("url"):
        _url_cache_file(f"{model.text}/{weights.text}", entry["url"])


def check_weights_reachable(model: str | None, pretrained: str | None) -> None:
    """check_reachable for names as given (--model, --pretrained)."""
    name = parse_model_name(model, known_zoo())
    check_reachable(name, parse_weights(pretrained, name))
