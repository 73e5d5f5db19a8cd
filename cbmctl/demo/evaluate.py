"""How well the tiny CLIP sees a generated world: zero-shot per attribute family, zero-shot species from
their names, a linear probe, the best accuracy the world's species profiles and fidelities allow, and how
the raw CLIP concept scores rank the true concepts within each concept set the world ships."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from cbmctl.demo.species import single_attribute_pairs, world_species
from cbmctl.demo.vocabulary import FAMILIES
from cbmctl.errors import CbmctlError

PRECISION_K = 5


def family_columns(attribute_names: list[str]) -> dict[str, list[tuple[str, int]]]:
    """'has_color::red' columns grouped by family: family -> [(value, column)]."""
    families: dict[str, list[tuple[str, int]]] = {}
    for column, name in enumerate(attribute_names):
        family, _, value = name.partition("::")
        families.setdefault(family.removeprefix("has_"), []).append((value, column))
    return families


def value_probabilities(family: str, profiles: list[dict], fidelity: dict[str, float]) -> np.ndarray:
    """(species, values) p(value | species) for one family: the profile's value with the family's fidelity,
    every other value equally likely otherwise (sample_attributes)."""
    names = list(FAMILIES[family])
    keep = fidelity[family]
    table = np.full((len(profiles), len(names)), (1 - keep) / (len(names) - 1))
    table[np.arange(len(profiles)), [names.index(p[family]) for p in profiles]] = keep
    return table


def profile_likelihood(codes: np.ndarray, profiles: list[dict], fidelity: dict[str, float]) -> np.ndarray:
    """p(attributes | species) for (N, families) value codes -> (N, species)."""
    total = np.ones((len(codes), len(profiles)))
    for f, family in enumerate(FAMILIES):
        total *= value_probabilities(family, profiles, fidelity)[:, codes[:, f]].T
    return total


def bayes_ceiling(profiles: list[dict], fidelity: dict[str, float]) -> float:
    """Exact accuracy of the Bayes-optimal classifier that sees an image's true attributes, species equally
    likely (every world draws as many images of each): (1/K) Σ_attributes max_species p(attributes | species),
    summed over all value combinations (8·6·3·2·3 = 864). No image-based model can beat it."""
    joint = np.ones((len(profiles), 1))
    for family in FAMILIES:
        table = value_probabilities(family, profiles, fidelity)
        joint = (joint[:, :, None] * table[:, None, :]).reshape(len(profiles), -1)
    return float(joint.max(axis=0).sum() / len(profiles))


def pair_ceiling(a: dict, b: dict, fidelity: dict[str, float]) -> float:
    """The Bayes accuracy of telling species a from species b alone (1.0 - it is how often they are confused)."""
    return bayes_ceiling([a, b], fidelity)


def world_profiles(spec) -> list[dict]:
    return [s.profile for s in world_species(spec.confusable, spec.species)[0]]


def _concept_set_report(root: Path, spec, backbone, features, attribute_names, attributes, labels, classes) -> dict:
    """Per shipped concept set: its size, how many concepts have ground truth, and precision@5 of the raw
    CLIP concept scores (the concept layer a CBM starts from) next to the best precision@5 the set allows;
    for a set that says which concepts describe which species, the description baseline's accuracy."""
    from cbmctl.concept_truth import truth_matrix
    from cbmctl.concepts import load_concept_set
    from cbmctl.demo.world_concepts import BUILTIN_CLEAN, set_file
    report = {}
    for name in spec.concept_sets:
        path = root / set_file(name)
        if name != "clean" and not path.is_file():
            report[name] = {"missing": str(path)}
            continue
        concept_set = load_concept_set(BUILTIN_CLEAN if name == "clean" else str(path))
        concepts = concept_set.concepts
        truth = truth_matrix(attribute_names, attributes, concepts)
        if truth is None:
            report[name] = {"concepts": len(concepts), "with_truth": 0}
            continue
        scores = features @ backbone.encode_texts(concepts).numpy().T
        k = PRECISION_K  # every shipped set has well over k concepts
        top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        true_count = truth.sum(axis=1)
        report[name] = {
            "concepts": len(concepts), "with_truth": int(truth.any(axis=0).sum()),
            f"precision@{k}": round(float(np.take_along_axis(truth, top, 1).mean()), 4),
            f"best_precision@{k}": round(float(np.minimum(true_count, k).mean() / k), 4),
            "true_concepts_per_image": round(float(true_count.mean()), 3),
            "true_of_no_image": int((~truth.any(axis=0)).sum())}
        if concept_set.associations:
            from cbmctl.cms import description_predict
            predicted = description_predict(features, backbone.encode_texts(concepts).numpy(), concepts, classes,
                                            concept_set.associations).numpy()
            report[name]["description_baseline"] = round(float((predicted == labels).mean()), 4)
    return report


def evaluate_world(cache, backbone, split: str = "test", world_root=None) -> dict:
    """The `cbmctl demo eval` report for one split of an embedded world."""
    from cbmctl.demo.presets import read_world_spec
    from cbmctl.probe import fit_linear_probe
    root = Path(world_root or cache.attrs["dataset_root"])
    seed, spec = read_world_spec(root)
    profiles = world_profiles(spec)
    data = cache.split(split)
    features = data.embeddings.astype(np.float32)
    names = cache.attribute_names
    if names is None or data.attributes is None:
        raise CbmctlError(f"{cache.path} has no attribute annotations: is it a demo world?")
    all_species = world_species(spec.confusable, spec.species)[0]
    if list(cache.classes) != [s.name for s in all_species]:
        raise CbmctlError(f"{cache.path}: its classes are not the demo world's species: is it a demo world?")
    report = {"split": split, "images": int(len(features)), "preset": spec.preset, "seed": seed,
              "knobs": spec.knobs(), "families": {}}
    codes = []
    for family, columns in family_columns(names).items():
        phrases = [FAMILIES.get(family, {}).get(value, [value])[0] for value, _ in columns]
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
                                    "val_accuracy": round(probe.val_accuracy, 4), "val_loss": round(probe.val_loss, 4),
                                    "train_images": int(len(train.labels)), "val_images": int(len(val.labels))}
    likelihood = profile_likelihood(np.stack(codes, 1), profiles, spec.fidelity)
    bayes_on_split = float((likelihood.argmax(1) == data.labels).mean())
    report["class_ceiling"] = {
        "expected": round(bayes_ceiling(profiles, spec.fidelity), 4), "bayes_on_split": round(bayes_on_split, 4),
        "how": "Bayes-optimal species from the true attributes, for this world's species profiles and "
               "fidelities; 'expected' exact over every attribute combination, 'bayes_on_split' on this split"}
    species_names = [s.name for s in all_species]
    report["confusable_pairs"] = [
        {"species": [species_names[i], species_names[j]], "family": family,
         "pair_ceiling": round(pair_ceiling(profiles[i], profiles[j], spec.fidelity), 4)}
        for i, j, family in single_attribute_pairs(all_species)]
    report["concept_sets"] = _concept_set_report(root, spec, backbone, features, names, data.attributes, data.labels,
                                                 list(cache.classes))
    return report
