"""The demo CLIP as a cbmctl plug-in: a tiny CLIP trained on the generated worlds (examples/train_demo_clip.py),
shipped beside this file and served under the model name `demo` through the backbone registry. cbmctl's
pyproject.toml names `register` in the `cbmctl.backbones` entry-point group, so the generic code finds the
demo CLIP the way it finds any plug-in's model, without importing the demo."""
from __future__ import annotations

from pathlib import Path

from cbmctl.backbones.registry import BackboneProvider, ShippedModel, register_backbone

DEMO_MODEL = "demo"
DEMO_CONFIG = Path(__file__).parent / "cbmctl-demo.json"
DEMO_WEIGHTS = Path(__file__).parent / "cbmctl-demo.safetensors"


def knows(classes) -> bool:
    """Whether a dataset's classes are the generated worlds' species (any subset of them): the only images
    whose embeddings by the demo CLIP mean anything."""
    from cbmctl.demo.species import SPECIES_SETS, base_species
    names = {s.name for kind in SPECIES_SETS for s in base_species(kind)}
    return bool(classes) and all(str(name).lower() in names for name in classes)


PROVIDER = BackboneProvider(DEMO_MODEL, lambda name: ShippedModel(DEMO_CONFIG, DEMO_WEIGHTS), label="the demo CLIP",
                            knows=knows, domain="the generated demo world")


def register() -> None:
    """The `cbmctl.backbones` entry point."""
    register_backbone(PROVIDER)
