"""The project's answer to "does the CBL objective matter, and when": every demo-world preset, made with a
seed the shipped CLIP and the tests never used, every method with 10 seeds (mean, 95 % interval, paired
difference to the plain CBM), both heads, concept precision, activation sparsity, the CMS variants,
zero-shot CLIP, the linear probe and the world's Bayes ceiling. Writes a markdown section per preset.

    python benchmarks/presets.py [--presets default,fewshot,noisy-concepts,hard] [--seeds 10]
                                 [--world-seed 4242] [--out benchmarks/out/presets.md] [--json out.json]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import cbmctl_json, machine, report

PRESETS = ("default", "fewshot", "noisy-concepts", "hard")


def run_preset(preset: str, seeds: int, world_seed: int, work: Path) -> dict:
    world = f"world-{preset}"
    from common import cbmctl
    cbmctl(["demo", "make", world, "--preset", preset, "--seed", world_seed], work)
    evaluation = cbmctl_json(["demo", "eval", world], work)
    cms = cbmctl_json(["cms", world, "--no-random-control"], work)
    trained = cbmctl_json(["train", world, "--compare", "all", "--seeds", seeds, "-q", "--out", "runs"], work)
    return {"preset": preset, "eval": evaluation, "cms": cms, "train": trained,
            "command": f"cbmctl demo make W --preset {preset} --seed {world_seed}; cbmctl demo eval W; "
                       f"cbmctl cms W; cbmctl train W --compare all --seeds {seeds}"}


def markdown_preset(result: dict) -> str:
    from cbmctl.render import compare_cells, markdown_table, significance_sentence
    evaluation, train, cms = result["eval"], result["train"], result["cms"]
    record = train["record"]
    ceiling = evaluation.get("class_ceiling", {})
    probe = evaluation.get("linear_probe_class", {})
    concept_set = record.get("concept_set", {})
    lines = [f"### {result['preset']}\n",
             f"`{result['command']}` — {evaluation.get('images')} test images; concepts "
             f"`{concept_set.get('name')}` ({concept_set.get('size')}); Bayes ceiling "
             f"{100 * ceiling.get('expected', float('nan')):.1f} % (on this split "
             f"{100 * ceiling.get('bayes_on_split', float('nan')):.1f} %); linear probe "
             f"{100 * probe.get('accuracy', float('nan')):.1f} %; zero-shot species "
             f"{100 * evaluation.get('zero_shot_class', {}).get('accuracy', float('nan')):.1f} %.\n"]
    headers, body = compare_cells(train["rows"])
    lines.append(markdown_table(headers, body))
    for key, what in (("top1", "top-1 of the sparse head (NEC = 5)"), ("dense_top1", "top-1 of the dense head")):
        sentence = significance_sentence(train["rows"], key, what)
        if sentence:
            lines.append(sentence + "\n")
    cms_cells = [[row["method"] + (" (transductive)" if row["transductive"] else ""), f"{100 * row['top1']:.1f}"]
                 for row in cms["rows"]]
    lines.append("Concept Matrix Search on the same test split:\n")
    lines.append(markdown_table(["method", "top-1"], cms_cells))
    return "\n".join(lines)


def markdown(result: dict) -> str:
    head = (f"Machine: {result['machine']}. Each preset's world is made with seed {result['world_seed']}; ± is "
            "the half-width of the 95 % interval over seeds; Δ vs none is the paired difference in top-1 "
            "(same seeds, same split) to the plain CBM, * where significant after Holm's correction over the "
            "methods compared. top-1 is the run's head (sparse, NEC = 5).\n")
    return head + "\n" + "\n".join(markdown_preset(r) for r in result["presets"])


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default=",".join(PRESETS))
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--world-seed", type=int, default=4242)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        results = [run_preset(p, args.seeds, args.world_seed, Path(folder)) for p in args.presets.split(",")]
    result = {"benchmark": "presets", "seeds": args.seeds, "world_seed": args.world_seed, "presets": results,
              "machine": machine()}
    return report(result, markdown(result), args.json)


if __name__ == "__main__":
    main()
