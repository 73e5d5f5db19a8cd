"""A quick reachability probe, so offline runs fail in about a second instead of retrying for a minute."""
from __future__ import annotations

import os
import socket


def offline_requested() -> bool:
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
               for v in ("HF_HUB_OFFLINE", "CBMCTL_OFFLINE"))


def reachable(host: str, port: int = 443, timeout: float = 1.5) -> bool:
    if offline_requested():
        return False
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False
