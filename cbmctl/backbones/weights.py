"""Weights files: their hash (remembered per file), a cheap check of the container, and loading them into
an open_clip model, including the compact format: a safetensors file that keeps only the token-embedding
rows its captions use, with their token ids under IDS_KEY (the shipped demo CLIP's full 49,408-row table would
dominate the file); loading puts the rows back into a zero table of the full size."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from cbmctl.errors import CbmctlError

TOKEN_KEY = "token_embedding.weight"
IDS_KEY = "cbmctl.token_ids"


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
    except (OSError, CbmctlError):  # a memo only: unwritable, or something not a file in its place
        pass
    return memo[key]


def state_dict_sha256(model) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


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


def load_weights(model, path: str, name: str) -> None:
    import open_clip
    if not _readable_checkpoint(path):
        raise CbmctlError(f"{path}: cannot read weights (not a safetensors, torch zip or pickle file)")
    try:
        if path.endswith(".safetensors") and _is_compact(path):
            from safetensors.torch import load_file

            state = load_file(path)
            model.load_state_dict(expand(state, model.token_embedding.weight.shape[0]))
        else:
            open_clip.load_checkpoint(model, path)
    except Exception as error:  # size mismatches, missing keys, open_clip's own shape assertions
        lines = str(error).strip().splitlines() or [type(error).__name__]
        detail = next((line.strip() for line in lines if "size mismatch" in line or "Missing" in line
                       or "Unexpected" in line), lines[0])
        raise CbmctlError(f"{path} does not fit architecture {name}: {detail[:200]}") from None


def _is_compact(path: str) -> bool:
    from safetensors import safe_open
    try:
        with safe_open(path, framework="pt") as handle:
            return IDS_KEY in handle.keys()
    except Exception:
        return False


def expand(state_dict: dict, vocab_size: int) -> dict:
    """A compact state dict with its token-embedding table back at full size (rows it does not keep: zeros)."""
    if IDS_KEY not in state_dict:
        return state_dict
    import torch
    rows = state_dict[TOKEN_KEY]
    table = torch.zeros(vocab_size, rows.shape[1], dtype=rows.dtype)
    table[state_dict[IDS_KEY].long()] = rows
    out = {k: v for k, v in state_dict.items() if k != IDS_KEY}
    out[TOKEN_KEY] = table
    return out
