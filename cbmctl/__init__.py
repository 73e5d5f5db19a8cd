"""cbmctl: Concept Bottleneck Models from a CLIP backbone and human-readable concepts.

The library is usable without the CLI; heavy modules (torch, open_clip) are imported lazily by
the functions that need them, so importing ``cbmctl`` is cheap.
"""

__version__ = "0.1.0"

from cbmctl.errors import CbmctlError

__all__ = ["__version__", "CbmctlError", "load_dataset", "load_backbone", "open_cache", "embed_dataset"]


def __getattr__(name):
    # Lazy public API: `cbmctl.load_backbone` imports torch only when first touched.
    if name == "load_dataset":
        from cbmctl.datasets import load_dataset
        return load_dataset
    if name == "load_backbone":
        from cbmctl.backbones import load_backbone
        return load_backbone
    if name == "open_cache":
        from cbmctl.cache import open_cache
        return open_cache
    if name == "embed_dataset":
        from cbmctl.embed import embed_dataset
        return embed_dataset
    raise AttributeError(f"module 'cbmctl' has no attribute {name!r}")
