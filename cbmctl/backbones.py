"""CLIP backbones through open_clip: zoo names and tags, hf-hub:, local weight files, custom configs,
and the shipped demo CLIP. Offline, missing weights fail in about a second with the fix in one line."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from cbmctl.errors import CbmctlError
from cbmctl.network import offline_requested, reachable

DEMO_MODEL = "demo"
DEMO_DIR = Path(__file__).parent / "demo"
DEMO_CONFIG = DEMO_DIR / "cbmctl-demo.json"
DEMO_WEIGHTS = DEMO_DIR / "cbmctl-demo.safetensors"
DEFAULT_MODEL = "ViT-L-14"
HF_HOST = "huggingface.co"


@dataclass
class Backbone:
    """A loaded CLIP: the model in eval mode, its image preprocessing and its tokenizer."""

    name: str
    pretrained: str
    model: object
    preprocess: object
    tokenizer: object
    weights_sha256: str
    preprocess_cfg: dict
    device: object
    source: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def embed_dim(self) -> int:
        if "embed_dim" not in self.extra:
            # towers differ in where they keep the projection width; one tiny forward is always right
            self.extra["embed_dim"] = int(self.encode_texts(["a"]).shape[1])
        return self.extra["embed_dim"]

    @property
    def logit_scale(self) -> float:
        return float(self.model.logit_scale.detach().exp().item())

    def identity(self) -> dict:
        """What a cache records to refuse mixing two backbones."""
        return {
            "backbone_model": self.name,
            "backbone_pretrained": self.pretrained,
            "backbone_source": self.source,
            "weights_sha256": self.weights_sha256,
            "preprocess": json.dumps(self.preprocess_cfg, sort_keys=True),
        }

    def _autocast(self):
        import contextlib

        import torch
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
        return contextlib.nullcontext()

    def encode_images(self, pixels):
        """L2-normalised float32 image embeddings for a preprocessed batch."""
        import torch
        import torch.nn.functional as F
        with torch.inference_mode(), self._autocast():
            features = self.model.encode_image(pixels.to(self.device, non_blocking=True))
        return F.normalize(features.float(), dim=-1)

    def encode_texts(self, texts: list[str], batch_size: int = 256):
        """L2-normalised float32 text embeddings (a CPU tensor), one row per text."""
        import torch
        import torch.nn.functional as F
        rows = []
        with torch.inference_mode(), self._autocast():
            for start in range(0, len(texts), batch_size):
                tokens = self.tokenizer(list(texts[start:start + batch_size])).to(self.device)
                rows.append(F.normalize(self.model.encode_text(tokens).float(), dim=-1).cpu())
        return torch.cat(rows) if rows else torch.zeros(0, 0)

    def encode_prompts(self, names: list[str], templates: list[str]):
        """One embedding per name: the normalised mean over prompt templates ("a photo of a {}.")."""
        import torch.nn.functional as F
        texts = [template.format(name) for name in names for template in templates]
        embeddings = self.encode_texts(texts).reshape(len(names), len(templates), -1)
        return F.normalize(embeddings.mean(dim=1), dim=-1)


def resolve_device(spec: str | None = "auto"):
    import torch
    spec = (spec or "auto").lower()
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    from cbmctl.sanitize import safe_text
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise CbmctlError(f"--device {safe_text(spec)!r} is not a device (auto, cpu, cuda, cuda:1, mps)") from None
    # every kind is checked here: torch itself fails only later, with a traceback, on the first tensor moved
    available = {"cpu": lambda: 1, "cuda": lambda: torch.cuda.device_count() if torch.cuda.is_available() else 0,
                 "mps": lambda: int(getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()),
                 "xpu": lambda: torch.xpu.device_count() if hasattr(torch, "xpu") and torch.xpu.is_available() else 0}
    if device.type not in available:
        raise CbmctlError(f"--device {safe_text(spec)!r}: cbmctl runs on cpu, cuda, mps or xpu, not {device.type}")
    count = available[device.type]()
    if count == 0:
        raise CbmctlError(f"--device {safe_text(spec)} was asked for but this machine has no usable {device.type} "
                          "device; use --device cpu (or auto)")
    if device.type != "cpu" and device.index is not None and device.index >= count:
        raise CbmctlError(f"--device {safe_text(spec)}: there are only {count} {device.type} devices (0-{count - 1})")
    return device


def sha256_file(path: Path) -> str:
    """SHA-256 of a weights file, remembered per (path, size, mtime) so large checkpoints hash once."""
    path = Path(path).resolve()
    stat = path.stat()
    key = f"{path}|{stat.st_size}|{stat.st_mtime_ns}"
    from cbmctl.files import cbmctl_home, write_text_atomic
    memo_file = cbmctl_home() / "weights-sha256.json"
    try:
        memo = json.loads(memo_file.read_text())
    except (OSError, ValueError):
        memo = {}
    if key in memo:
        return memo[key]
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    memo[key] = digest.hexdigest()
    try:
        write_text_atomic(memo_file, json.dumps(memo))
    except OSError:
        pass
    return memo[key]


def _state_dict_sha256(model) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def list_models() -> dict[str, list[str]]:
    """open_clip's zoo, name -> pretrained tags, plus the shipped demo model."""
    import open_clip
    tags: dict[str, list[str]] = {DEMO_MODEL: ["(shipped)"]}
    for name in open_clip.list_models():
        tags.setdefault(name, [])
    for name, tag in open_clip.list_pretrained():
        tags.setdefault(name, []).append(tag)
    return tags


def _offline_fix(what: str, where: str) -> CbmctlError:
    reason = "HF_HUB_OFFLINE is set" if offline_requested() else f"{HF_HOST} is unreachable"
    return CbmctlError(f"{what} is not in the HF cache and {reason}: go online once, or place {where} in the "
                       f"HF cache ($HF_HOME/hub), or pass --pretrained /path/to/weights.safetensors")


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
    return [cbmctl_home() / "open_clip-tags.json", Path(__file__).parent / "open_clip_tags.json"]


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


def _read_index() -> dict | None:
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
    payload = _read_index()
    return payload["tags"] if payload else None


def normalise_tag(tag: str) -> str:
    """A zoo tag as open_clip looks it up (case and '-' do not matter)."""
    return str(tag).lower().replace("-", "_")


def check_weights_reachable(model: str | None, pretrained: str | None) -> None:
    """Fail in well under a second, before importing torch, when a zoo tag's weights are neither on disk nor
    reachable. Silent whenever it cannot tell (no index for this open_clip, not a zoo tag, a file...)."""
    if model and model.startswith("hf-hub:"):
        _hf_hub_local_dir(model[len("hf-hub:"):].strip("/"))  # raises when neither cached nor reachable
        return
    if not model or not pretrained or pretrained == "none" or Path(pretrained).expanduser().is_file():
        return
    index = _read_tag_index()
    entry = (index or {}).get(model, {}).get(normalise_tag(pretrained))
    if not entry:
        return
    if entry.get("repo"):
        if _cached_hub_file(entry["repo"], entry["files"]) or reachable(HF_HOST):
            return
        raise _offline_fix(f"{model}/{pretrained}", f"{' or '.join(entry['files'])} of {entry['repo']}")
    if entry.get("url"):
        cached = Path.home() / ".cache" / "clip" / os.path.basename(entry["url"])
        host = entry["url"].split("/")[2]
        if not cached.is_file() and not reachable(host):
            raise CbmctlError(f"{model}/{pretrained} weights are not in ~/.cache/clip and {host} is unreachable: "
                              f"go online once, or place {cached.name} there, or pass --pretrained /path/to/weights")


def _tag_weights(name: str, tag_cfg: dict, tag: str) -> str:
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
        cached = Path.home() / ".cache" / "clip" / os.path.basename(tag_cfg["url"])
        if cached.is_file():
            return str(cached)
        host = tag_cfg["url"].split("/")[2]
        if not reachable(host):
            raise CbmctlError(f"{name}/{tag} weights are not in ~/.cache/clip and {host} is unreachable: go online "
                              f"once, or place {cached.name} there, or pass --pretrained /path/to/weights")
    try:
        return download_pretrained(tag_cfg, cache_dir=hf_cache_dir() if hub else None)
    except Exception as error:  # network failures come in many types; the user needs one line
        raise CbmctlError(f"could not download {name}/{tag}: {str(error).splitlines()[0]}") from None


def _hf_hub_local_dir(repo_id: str) -> str:
    config = _cached_hub_file(repo_id, ["open_clip_config.json"])
    if config:
        weights = Path(config).parent
        if any(weights.glob("*.safetensors")) or any(weights.glob("*.bin")):
            return f"local-dir:{weights}"
    if not reachable(HF_HOST):
        raise _offline_fix(f"hf-hub:{repo_id}", "open_clip_config.json and its weights")
    return f"hf-hub:{repo_id}"


def _register_config(path: Path) -> str:
    import open_clip

    from cbmctl.data_files import MAX_STRUCTURED_BYTES, read_text_capped
    try:
        json.loads(read_text_capped(path, MAX_STRUCTURED_BYTES))
    except (ValueError, RecursionError) as error:
        raise CbmctlError(f"{path}: not a readable open_clip model config ({error})") from None
    open_clip.add_model_config(str(path))
    return path.stem


def _readable_checkpoint(path: str) -> bool:
    """Cheap check of the container (safetensors header, torch zip or pickle) before loading it."""
    import zipfile
    if path.endswith(".safetensors"):
        from safetensors import safe_open
        try:
            with safe_open(path, framework="pt") as handle:
                handle.keys()
            return True
        except Exception:
            return False
    with open(path, "rb") as handle:
        return zipfile.is_zipfile(path) or handle.read(1) == b"\x80"


def _load_weights(model, path: str, name: str) -> None:
    import open_clip
    if not _readable_checkpoint(path):
        raise CbmctlError(f"{path}: cannot read weights (not a safetensors, torch zip or pickle file)")
    try:
        if path.endswith(".safetensors") and _is_compact(path):
            from safetensors.torch import load_file

            from cbmctl.demo.compact import expand
            state = load_file(path)
            model.load_state_dict(expand(state, model.token_embedding.weight.shape[0]))
        else:
            open_clip.load_checkpoint(model, path)
    except Exception as error:  # size mismatches, missing keys, open_clip's own shape assertions
        lines = str(error).strip().splitlines() or [type(error).__name__]
        detail = next((line.strip() for line in lines if "size mismatch" in line or "Missing" in line
                       or "Unexpected" in line), lines[0])
        raise CbmctlError(f"{path} does not fit architecture {name}: {detail[:200]}") from None


@contextlib.contextmanager
def _quiet_logging():
    """open_clip says "no pretrained weights loaded" through logging.warning while we load the weights
    ourselves. Drop open_clip's own records for the duration and nothing else (logging is not switched
    off); and since logging.warning on a root logger without handlers would install one for good
    (basicConfig), stand in for it meanwhile with a handler that passes records to logging's last resort."""
    import logging

    import open_clip
    package = str(Path(open_clip.__file__).parent)

    def not_open_clip(record: logging.LogRecord) -> bool:
        return not str(record.pathname).startswith(package)

    class LastResort(logging.Handler):
        def emit(self, record):
            if logging.lastResort is not None and record.levelno >= logging.lastResort.level:
                logging.lastResort.handle(record)

    root = logging.getLogger()
    stand_in = LastResort() if not root.handlers else None
    root.addFilter(not_open_clip)
    if stand_in:
        root.addHandler(stand_in)
    try:
        yield
    finally:
        root.removeFilter(not_open_clip)
        if stand_in:
            root.removeHandler(stand_in)


def _is_compact(path: str) -> bool:
    from safetensors import safe_open

    from cbmctl.demo.compact import IDS_KEY
    try:
        with safe_open(path, framework="pt") as handle:
            return IDS_KEY in handle.keys()
    except Exception:
        return False


def load_backbone(model: str | None = None, pretrained: str | None = None, device="cpu") -> Backbone:
    """Load a CLIP for embedding.

    model: an open_clip zoo name (ViT-L-14), 'hf-hub:org/repo', 'demo', or a path to an open_clip
    model-config JSON. pretrained: a zoo tag, a local .pt/.bin/.safetensors file, or 'none' (random
    weights, seeded, for tests and benchmarks)."""
    model = model or DEFAULT_MODEL
    check_weights_reachable(model, pretrained)
    import open_clip
    import torch

    if _read_tag_index() is None:
        write_tag_index(_tag_index_paths()[0])
    if not isinstance(device, torch.device):
        device = resolve_device(device)
    create_name, weights_path, tag_cfg, source = model, None, {}, ""
    if model == DEMO_MODEL:
        create_name = _register_config(DEMO_CONFIG)
        if pretrained in (None, "demo", "shipped"):
            if not DEMO_WEIGHTS.is_file():
                raise CbmctlError(f"the demo CLIP weights are missing ({DEMO_WEIGHTS}); reinstall cbmctl")
            weights_path, pretrained = str(DEMO_WEIGHTS), "shipped"
    elif model.endswith(".json"):
        if not Path(model).is_file():
            raise CbmctlError(f"--model {model}: no such model config file")
        create_name = _register_config(Path(model))
        source = f"config:{sha256_file(Path(model))[:16]}"
    elif model.startswith("hf-hub:"):
        if pretrained not in (None, "", "hub"):
            raise CbmctlError("--pretrained does not apply to hf-hub: models (their repo names the weights)")
        create_name, pretrained = _hf_hub_local_dir(model[len("hf-hub:"):].strip("/")), "hub"
    elif model not in open_clip.list_models():
        raise CbmctlError(f"unknown model {model!r}: see `cbmctl models` (or pass an open_clip config .json)")

    if pretrained is None and weights_path is None and not create_name.startswith(("local-dir:", "hf-hub:")):
        tags = open_clip.list_pretrained_tags_by_model(create_name)
        if not tags:
            raise CbmctlError(f"{model} has no pretrained tags: pass --pretrained PATH or --pretrained none")
        pretrained = tags[0]
    if weights_path is None and pretrained not in (None, "none", "hub"):
        tag_cfg = open_clip.get_pretrained_cfg(create_name, pretrained)
        if tag_cfg:
            weights_path = _tag_weights(create_name, tag_cfg, pretrained)
        elif Path(pretrained).expanduser().is_file():
            weights_path = str(Path(pretrained).expanduser())
        else:
            tags = ", ".join(open_clip.list_pretrained_tags_by_model(create_name)) or "none"
            raise CbmctlError(f"--pretrained {pretrained!r} is neither a tag of {model} ({tags}) nor a file")

    overrides = {}
    for key, arg in (("mean", "image_mean"), ("std", "image_std"), ("interpolation", "image_interpolation"),
                     ("resize_mode", "image_resize_mode")):
        if key in tag_cfg:
            overrides[arg] = tag_cfg[key]
    with torch.random.fork_rng(devices=[]), _quiet_logging():
        torch.manual_seed(0)  # random-weight backbones must be the same in every process
        try:
            clip, _, preprocess = open_clip.create_model_and_transforms(
                create_name, pretrained=None, force_quick_gelu=bool(tag_cfg.get("quick_gelu", False)),
                pretrained_text=False, **overrides)
        except (RuntimeError, ValueError, FileNotFoundError) as error:
            raise CbmctlError(f"cannot build {model}: {str(error).splitlines()[0][:200]}") from None
    if weights_path:
        _load_weights(clip, weights_path, model)
        weights_sha256 = sha256_file(Path(weights_path))
        weights_source = weights_path
    else:
        weights_sha256 = _state_dict_sha256(clip)
        weights_source = create_name if pretrained == "hub" else "random-init(seed=0)"
    # a custom config is part of the identity too: the same weights file under another config differs
    source = f"{source} + {weights_source}" if source else weights_source
    clip.eval().to(device)
    with _quiet_logging():  # get_tokenizer logs through the root logger too
        tokenizer = open_clip.get_tokenizer(create_name)
    from open_clip.model import get_model_preprocess_cfg
    preprocess_cfg = {k: (list(v) if isinstance(v, tuple) else v) for k, v in get_model_preprocess_cfg(clip).items()}
    return Backbone(name=model, pretrained=str(pretrained or "none"), model=clip, preprocess=preprocess,
                    tokenizer=tokenizer, weights_sha256=weights_sha256, preprocess_cfg=preprocess_cfg,
                    device=device, source=str(source))


def load_tokenizer(model: str | None = None):
    """(tokenizer, context length) of a model without building it or loading weights."""
    import open_clip
    model = model or DEFAULT_MODEL
    if model == DEMO_MODEL:
        name = _register_config(DEMO_CONFIG)
    elif model.endswith(".json"):
        name = _register_config(Path(model))
    elif model.startswith("hf-hub:"):
        name = _hf_hub_local_dir(model[len("hf-hub:"):].strip("/"))
    elif model in open_clip.list_models():
        name = model
    else:
        raise CbmctlError(f"unknown model {model!r}: see `cbmctl models`")
    tokenizer = open_clip.get_tokenizer(name)
    return tokenizer, int(getattr(tokenizer, "context_length", 77))


def load_recorded_backbone(record: dict, where, device="auto") -> Backbone:
    """The backbone a cache or run recorded (backbone_model, backbone_pretrained, weights_sha256), refused if
    the weights found now are not the ones it was made with."""
    pretrained = record["backbone_pretrained"]
    backbone = load_backbone(record["backbone_model"], None if pretrained in ("shipped", "hub") else pretrained,
                             device)
    if backbone.weights_sha256 != record["weights_sha256"]:
        raise CbmctlError(f"{where} was made with other weights for {record['backbone_model']} "
                          f"(sha256 {record['weights_sha256'][:12]}, found {backbone.weights_sha256[:12]})")
    return backbone


def load_backbone_of_cache(cache, device="auto") -> Backbone:
    return load_recorded_backbone(cache.attrs, cache.path, device)


# ---- what a cache's backbone is, told apart without importing torch or open_clip ----

# the packages whose versions decide what is not pinned by a weights file's hash: the model's
# architecture and preprocessing come from open_clip; random-init weights also from torch
_VERSIONED = ("open_clip_torch", "torch")


def recorded_versions(pretrained: str | None) -> dict:
    """Cache attributes naming the package versions a backbone's identity depends on, with today's values."""
    packages = _VERSIONED if str(pretrained).lower() == "none" else _VERSIONED[:1]
    return {f"{package.split('_')[0]}_version": installed_version(package) for package in packages}


@dataclass
class BackboneRequest:
    """A backbone as asked for (--model/--pretrained, or the dataset's cbmctl.yaml), resolved as far as
    possible without building it: enough to refuse a cache made with another one, and, when every part is
    pinned (weights hash, or random init under the same versions), to know a cache was made with this one."""

    model: str
    pretrained: str | None  # as a cache records it; None for a weights file (compared by hash) or unknown
    weights_sha256: str | None = None  # None when only building the model tells (random init, hf-hub)
    config_sha16: str | None = None  # a model-config .json is compared by content, not by its path
    label: str = ""  # how to name it in messages

    def conflicts(self, attrs: dict) -> list[tuple[str, str, str]]:
        """(what, the cache has, this request has) for every part that contradicts the cache."""
        found = []
        if self.config_sha16:
            if not str(attrs.get("backbone_source", "")).startswith(f"config:{self.config_sha16}"):
                found.append(("model config", str(attrs.get("backbone_model")), self.model))
        elif str(attrs.get("backbone_model")) != self.model:
            found.append(("model", str(attrs.get("backbone_model")), self.model))
        if self.pretrained is not None and \
                normalise_tag(attrs.get("backbone_pretrained")) != normalise_tag(self.pretrained):
            found.append(("pretrained", str(attrs.get("backbone_pretrained")), self.pretrained))
        if self.weights_sha256 and str(attrs.get("weights_sha256")) != self.weights_sha256:
            found.append(("weights sha256", str(attrs.get("weights_sha256"))[:12], self.weights_sha256[:12]))
        return found

    def settles(self, attrs: dict) -> bool:
        """True when the cache was certainly made with this backbone, weights and preprocessing."""
        if self.conflicts(attrs):
            return False
        random_init = str(self.pretrained).lower() == "none"
        if not (self.weights_sha256 or random_init):
            return False
        versions = recorded_versions(self.pretrained)
        return all(value is not None and str(attrs.get(key)) == value for key, value in versions.items())


def _zoo_weights_file(model: str, tag: str, entry: dict) -> str | None:
    """The local file `_tag_weights` would load for a zoo tag, when it is on disk."""
    if entry.get("repo"):
        return _cached_hub_file(entry["repo"], entry["files"])
    if entry.get("url"):
        cached = Path.home() / ".cache" / "clip" / os.path.basename(entry["url"])
        return str(cached) if cached.is_file() else None
    return None


def backbone_request(model: str | None, pretrained: str | None) -> BackboneRequest:
    """Validate --model/--pretrained and resolve them without importing torch or open_clip: a missing
    model-config file, a zoo name or tag open_clip does not have, and --pretrained on an hf-hub model are
    one-line errors here, before anything slow happens."""
    model = model or DEFAULT_MODEL
    label = f"{model}/{pretrained or 'default'}"
    weights_file = None
    if pretrained not in (None, "none") and Path(pretrained).expanduser().is_file():
        weights_file = Path(pretrained).expanduser()
    if model == DEMO_MODEL:
        if pretrained in (None, "demo", "shipped"):
            if not DEMO_WEIGHTS.is_file():
                raise CbmctlError(f"the demo CLIP weights are missing ({DEMO_WEIGHTS}); reinstall cbmctl")
            return BackboneRequest(model, "shipped", sha256_file(DEMO_WEIGHTS), label="demo/shipped")
        if pretrained != "none" and weights_file is None:
            raise CbmctlError(f"--pretrained {pretrained!r} for the demo CLIP: leave it out (shipped weights), "
                              f"or give 'none' or a weights file")
        pinned = None
    elif model.endswith(".json"):
        if not Path(model).is_file():
            raise CbmctlError(f"--model {model}: no such model config file")
        request = BackboneRequest(model, None if weights_file else pretrained,
                                  config_sha16=sha256_file(Path(model))[:16], label=label)
        if weights_file:
            request.weights_sha256 = sha256_file(weights_file)
        return request
    elif model.startswith("hf-hub:"):
        if pretrained not in (None, "", "hub"):
            raise CbmctlError("--pretrained does not apply to hf-hub: models (their repo names the weights)")
        return BackboneRequest(model, "hub", label=model)
    else:
        index = _read_index()
        tags = (index or {}).get("tags", {}).get(model, {})
        if index and "models" in index and model not in index["models"]:
            raise CbmctlError(f"unknown model {model!r}: see `cbmctl models` (or pass an open_clip config .json)")
        if pretrained is None and tags:
            pretrained = next(iter(tags))
            label = f"{model}/{pretrained}"
        entry = tags.get(normalise_tag(pretrained)) if pretrained else None
        if index and pretrained not in (None, "none") and not entry and weights_file is None:
            raise CbmctlError(f"--pretrained {pretrained!r} is neither a tag of {model} "
                              f"({', '.join(tags) or 'none'}) nor a file")
        pinned = _zoo_weights_file(model, pretrained, entry) if entry else None
    if weights_file is not None:
        return BackboneRequest(model, None, sha256_file(weights_file), label=label)
    return BackboneRequest(model, pretrained, sha256_file(Path(pinned)) if pinned else None, label=label)


def is_demo_world(classes) -> bool:
    """Whether a dataset's classes are the generated demo world's species (any subset of them)."""
    from cbmctl.demo.world import SPECIES_SETS, base_species
    names = {s.name for kind in SPECIES_SETS for s in base_species(kind)}
    return bool(classes) and all(str(name).lower() in names for name in classes)


def meaningless_backbone(model: str, pretrained: str | None, classes, dataset_name: str = "this dataset"
                         ) -> str | None:
    """One line when a backbone's results will mean nothing for this data, else None."""
    if str(pretrained).lower() == "none":
        return (f"{model} with --pretrained none has random weights: its embeddings, and every result built on "
                f"them, carry no meaning (fine for tests and benchmarks)")
    if model == DEMO_MODEL and not is_demo_world(classes):
        return (f"the demo CLIP knows only the generated demo world, not {dataset_name}: its results there are "
                f"meaningless (choose a real backbone with --model, see `cbmctl models`)")
    return None
