"""How well the tiny CLIP sees a generated world: zero-shot per attribute family, zero-shot species from
their names, a linear probe, and the best accuracy the species profiles allow."""
from __future__ import annotations

import numpy as np

from cbmctl.demo import world


def family_columns(attribute_names: list[str]) -> dict[str, list[tuple[str, int]]]:
    """'has_color::red' columns grouped by family: family -> [(value, column)]."""
    families: dict[str, list[tuple[str, int]]] = {}
    for column, name in enumerate(attribute_names):
        family, _, value = name.partition("::")
        families.setdefault(family.removeprefix("has_"), []).append((value, column))
    return families


def profile_log_likelihood(codes: np.ndarray) -> np.ndarray:
    """log p(attributes | species) for (N, families) value codes -> (N, species)."""
    all_species = world.species()
    total = np.zeros((len(codes), len(all_species)))
    for f, (family, values) in enumerate(world.FAMILIES.items()):
        names = list(values)
        keep, other = world.FIDELITY[family], (1 - world.FIDELITY[family]) / (len(names) - 1)
        profile = np.array([names.index(s.profile[family]) for s in all_species])
        total += np.log(np.where(codes[:, f:f + 1] == profile[None, :], keep, other))
    return total


def expected_ceiling(samples: int = 200_000, seed: int = 0) -> float:
    """Accuracy of the Bayes-optimal classifier that sees the true attributes (species equally likely),
    by Monte Carlo over the world's own sampling process: no image-based model can beat it."""
    rng = np.random.default_rng(seed)
    all_species = world.species()
    labels = rng.integers(len(all_species), size=samples)
    codes = np.empty((samples, len(world.FAMILIES)), dtype=np.int64)
    for f, (family, values) in enumerate(world.FAMILIES.items()):
        names = list(values)
        profile = np.array([names.index(s.profile[family]) for s in all_species])[labels]
        keep = rng.random(samples) < world.FIDELITY[family]
        shift = rng.integers(1, len(names), size=samples)  # uniform over the other values
        codes[:, f] = np.where(keep, profile, (profile + shift) % len(names))
    return float((profile_log_likelihood(codes).argmax(1) == labels).mean())


def evaluate_world(cache, backbone, split: str = "test") -> dict:
    """The `cbmctl demo eval` report for one split of an embedded world."""
    from cbmctl.probe import fit_linear_probe
    data = cache.split(split)
    features = data.embeddings.astype(np.float32)
    names = cache.attribute_names
    if names is None or data.attributes is None:
        from cbmctl.errors import CbmctlError
        raise CbmctlError(f"{cache.path} has no attribute annotations: is it a demo world?")
    report = {"split": split, "images": int(len(features)), "families": {}}
    codes = []
    for family, columns in family_columns(names).items():
        phrases = [world.FAMILIES.get(family, {}).get(value, [value])[0] for value, _ in columns]
        text = backbone.encode_texts(phrases).numpy()
        truth = data.attributes[:, [c for _, c in columns]].argmax(1)
        codes.append(truth)
        predicted = (features @ text.T).argmax(1)
        report["families"][family] = {"accuracy": round(float((predicted == truth).mean()), 4),
                                      "chance": round(1 / len(columns), 4), "values": len(columns),
                                      "prompts": phrases}
    classes = cache.class_embeddings()
    zero_shot = float(((features @ classes.T).argmax(1) == data.labels).mean())
    report["zero_shot_class"] = {"accuracy": round(zero_shot, 4), "chance": round(1 / len(classes), 4)}
    train, val = cache.split("train"), cache.split("val")
    probe = fit_linear_probe(train.embeddings, train.labels, val.embeddings, val.labels, len(classes))
    report["linear_probe_class"] = {"accuracy": round(probe.accuracy(features, data.labels), 4), "l2": probe.l2,
                                    "val_accuracy": round(probe.val_accuracy, 4)}
    bayes_on_split = float((profile_log_likelihood(np.stack(codes, 1)).argmax(1) == data.labels).mean())
    report["class_ceiling"] = {"expected": round(expected_ceiling(), 4), "bayes_on_split": round(bayes_on_split, 4),
                               "how": "Bayes-optimal species from the true attributes (profiles and fidelities "
                                      "are known); 'expected' by Monte Carlo over 200,000 draws"}
    return report
