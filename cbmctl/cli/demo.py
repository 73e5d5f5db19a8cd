"""`cbmctl demo make` and `cbmctl demo eval`: the generated world and its tiny CLIP."""
from __future__ import annotations

import click

from cbmctl.cli.common import echo_warning, print_json
from cbmctl.demo.bench import DEFAULT_WORLD_SEED


@click.group()
def demo():
    """The embedded default: a generated world with ground-truth concepts, and its tiny CLIP."""


@demo.command()
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--seed", default=0, show_default=True, type=click.IntRange(0, 2**32 - 1),
              help="Same seed and knobs, byte-identical files (0 to 2^32-1).")
@click.option("--preset", default="default", show_default=True,
              type=click.Choice(["default", "fewshot", "noisy-concepts", "hard", "cub-like"]),
              help="default: 20 train + 20 test images per species, clean concepts. fewshot: 6 train (5 after "
                   "the validation carve) + 100 test. noisy-concepts: 100 test, default concept set with 200 "
                   "distractor phrases. hard: fewshot + 6 extra confusable pairs + the distractor set. cub-like (the "
                   "benchmark default): 50 species named after part of their features, attributes seen through "
                   "haze, clutter and occlusion, fidelity 0.9, an LLM-like concept set; 24 + 24 images. The "
                   "options below override the preset's value.")
@click.option("--images-per-class", default=None, type=int,
              help="Images per species, half train and half test (the pre-preset form of the two below; 3 to 10000).")
@click.option("--train-per-class", default=None, type=int,
              help="Train images per species, 2 to 5000 (cbmctl carves validation out of them: 10 %, at least 1).")
@click.option("--test-per-class", default=None, type=int, help="Test images per species, 1 to 5000.")
@click.option("--fidelity", default=None,
              help="How often an image shows its species' value: one number for every family, or "
                   "FAMILY=P pairs (color=0.7,shape=0.9). Default 0.85 colour and shape, 0.8 the rest.")
@click.option("--confusable", default=None, type=int,
              help="Extra species pairs made to differ in one attribute (edits one family of one species; "
                   "the base profiles already have 3 such pairs).")
@click.option("--concept-sets", default=None,
              help="Concept sets shipped with the world, first is the default in its cbmctl.yaml: "
                   "clean, distractors, noisy, llm (cub-like species only) (comma-separated).")
@click.option("--distractors", default=None, type=int,
              help="Distractor phrases in the 'distractors' set (default 200; at most the 224 the demo CLIP can compose).")
@click.option("--concept-noise", default=None, type=float,
              help="Share of the 22 attribute concepts missing or replaced in the 'noisy' set (default 0.25).")
@click.option("--species", default=None, type=click.Choice(["classic", "cub-like"]),
              help="classic: the 30 species the demo CLIP knows by name; cub-like: 50 species whose names carry "
                   "their colour, pattern and shape only.")
@click.option("--nuisance", default=None, type=float,
              help="0 (clean images) to 1 (the cub-like calibration): how often images are hazy, cluttered, "
                   "occluded, shrunk or show a second background.")
@click.option("--quiet", "-q", is_flag=True, help="Only the line saying what was written (stdout).")
def make(directory, seed, preset, images_per_class, quiet, **knobs):
    """Generate a demo world in DIRECTORY (CUB_200_2011 layout + attributes + cbmctl.yaml + world.json)."""
    from cbmctl.demo.presets import read_world_spec
    from cbmctl.demo.species import world_species
    from cbmctl.demo.world import make_world
    root = make_world(directory, seed=seed, images_per_class=images_per_class, preset=preset, **knobs)
    _, spec = read_world_spec(root)
    default_set = spec.concept_sets[0]
    if not quiet:
        click.echo(f"preset {spec.preset}: {spec.train_per_class} train + {spec.test_per_class} test images per "
                   f"species, fidelity {_fidelity_text(spec.fidelity)}, {spec.confusable} extra confusable pairs, "
                   f"concept sets {', '.join(spec.concept_sets)} (default {default_set}); all knobs in "
                   f"{root / 'world.json'}", err=True)
    species = len(world_species(spec.confusable, spec.species)[0])
    click.echo(f"wrote {root}: {species} species × {spec.train_per_class + spec.test_per_class} images (seed {seed}); "
               f"next: cbmctl embed {root}")


def _fidelity_text(fidelity: dict) -> str:
    values = set(fidelity.values())
    if len(values) == 1:
        return f"{values.pop():g}"
    return ",".join(f"{family}={value:g}" for family, value in fidelity.items())


MAX_PAIR_ROWS = 8  # a cub-like world has dozens of single-attribute pairs: the table summarises them


@demo.command(name="eval")
@click.argument("directory", type=click.Path(exists=True, file_okay=False))
@click.option("--split", default="test", show_default=True, type=click.Choice(["train", "val", "test"]),
              help="The split to evaluate.")
@click.option("--cache", "cache_path", default=None, type=click.Path(dir_okay=False),
              help="The world's cache (default: the one `cbmctl embed DIRECTORY` makes; embedded when missing).")
@click.option("--device", default="auto", show_default=True, help="auto (cuda > mps > cpu), cpu, cuda, cuda:N.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def evaluate(directory, split, cache_path, device, as_json):
    """Zero-shot accuracy of the demo CLIP per attribute family and per species, a linear probe, and the
    best species accuracy the world allows, on DIRECTORY's split."""
    from cbmctl.backbones import load_backbone
    from cbmctl.demo.backbone import DEMO_MODEL
    from cbmctl.demo.evaluate import evaluate_world
    from cbmctl.pipeline import resolve_cache
    from cbmctl.preflight import plan_cache
    plan = plan_cache(str(directory), model=DEMO_MODEL, cache_path=cache_path)
    # as train and cms do: a missing cache is embedded first, saying so (minutes with no other line otherwise)
    cache, _ = resolve_cache(str(directory), device=device, log=None if as_json else _echo_err, warn=echo_warning,
                             plan=plan)
    backbone = load_backbone(DEMO_MODEL, None, device)
    root = plan.dataset.root
    report = {"world": str(root), **evaluate_world(cache, backbone, split, root)}
    if as_json:
        return print_json(report)
    from rich.table import Table

    from cbmctl.cli.common import console
    table = Table(title=f"demo CLIP on {root} ({split}, {report['images']} images)")
    for column in ("task", "accuracy", "chance"):
        table.add_column(column, justify="left" if column == "task" else "right")
    for family, row in report["families"].items():
        table.add_row(f"zero-shot {family} ({row['values']} values)", f"{row['accuracy']:.3f}", f"{row['chance']:.3f}")
    table.add_row("zero-shot species (class names)", f"{report['zero_shot_class']['accuracy']:.3f}",
                  f"{report['zero_shot_class']['chance']:.3f}")
    table.add_row(f"linear probe species (L2 {report['linear_probe_class']['l2']:g})",
                  f"{report['linear_probe_class']['accuracy']:.3f}", f"{report['zero_shot_class']['chance']:.3f}")
    table.add_row("species ceiling (Bayes, true attributes)", f"{report['class_ceiling']['expected']:.3f}", "")
    pairs = report["confusable_pairs"]
    for pair in pairs if len(pairs) <= MAX_PAIR_ROWS else []:
        table.add_row(f"  pair {' / '.join(pair['species'])} (differ in {pair['family']})",
                      f"{pair['pair_ceiling']:.3f}", "0.500")
    if len(pairs) > MAX_PAIR_ROWS:
        ceilings = [pair["pair_ceiling"] for pair in pairs]
        table.add_row(f"  {len(pairs)} species pairs differ in one attribute (pair ceilings; each in --json)",
                      f"{min(ceilings):.3f}-{max(ceilings):.3f}", "0.500")
    for name, row in report["concept_sets"].items():
        if "precision@5" in row:
            table.add_row(f"concepts '{name}' ({row['concepts']}): CLIP precision@5, best {row['best_precision@5']:.3f}",
                          f"{row['precision@5']:.3f}", "")
        if "description_baseline" in row:
            table.add_row(f"concepts '{name}': description baseline (species by their concepts)",
                          f"{row['description_baseline']:.3f}", f"{report['zero_shot_class']['chance']:.3f}")
    console().print(table)
    knobs = report["knobs"]
    console().print(f"preset {report['preset']}, seed {report['seed']}: {knobs['train_per_class']} train + "
                    f"{knobs['test_per_class']} test images per species, fidelity {_fidelity_text(knobs['fidelity'])}, "
                    f"{knobs['confusable']} extra confusable pairs", highlight=False)


def _make_option(name: str) -> click.Option:
    return next(param for param in make.params if param.name == name)


def _bench_default_preset() -> str:
    # the benchmark's world is cub-like where this cbmctl has that preset
    choices = _make_option("preset").type.choices
    return "cub-like" if "cub-like" in choices else "default"


@demo.command()
@click.option("--preset", default=_bench_default_preset(), show_default=True, type=_make_option("preset").type,
              help="The worlds' preset (any that `demo make` takes); the world knobs below override it.")
@click.option("--worlds", default=3, show_default=True, type=int,
              help="Worlds to make (2 to 50): the random factor the pooled interval is over.")
@click.option("--seeds", default=5, show_default=True, type=int,
              help="Training seeds per world (at least 2): seeds 0..N-1, paired between methods.")
@click.option("--out", default=None, type=click.Path(file_okay=False),
              help="The bench folder (default bench/PRESET-Wworlds-Sseeds); rerunning the same command there "
                   "resumes it.")
@click.option("--world-seed", default=DEFAULT_WORLD_SEED, show_default=True, type=int,
              help="Base of the worlds' seeds (used for nothing else): world k's seed is derived from it and k, "
                   "and recorded.")
@click.option("--epochs", default=None, type=int, help="At most this many epochs per model (default: train's).")
@click.option("--min-epochs", default=None, type=int, help="Never stop before this many epochs (default: train's).")
@click.option("--patience", default=None, type=int, help="Early-stopping patience (default: train's).")
@click.option("--batch-size", default=None, type=int, help="Images per step (default: train's).")
@click.option("--device", default="auto", show_default=True, help="auto (cuda > mps > cpu), cpu, cuda, cuda:N.")
@click.option("--json", "as_json", is_flag=True, help="Print bench.json instead of the tables.")
@click.option("--quiet", "-q", is_flag=True, help="No progress lines.")
def bench(preset, worlds, seeds, out, world_seed, epochs, min_epochs, patience, batch_size, device, as_json, quiet,
          **knobs):
    """Benchmark every method over several demo worlds: per world the paired difference of each method to
    the plain CBM over seeds, pooled over worlds as a random factor (Holm over methods), and the paper's
    claims each with a verdict. Writes bench.json and forest.png in the bench folder."""
    from cbmctl.cli.common import on_interrupt
    from cbmctl.demo.bench import BenchSpec, run_bench
    on_interrupt("rerun the same `cbmctl demo bench` command to continue: finished worlds are not redone")
    train = {"epochs": epochs, "min_epochs": min_epochs, "patience": patience, "batch_size": batch_size}
    spec = BenchSpec(preset=preset, worlds=worlds, seeds=seeds, world_seed=world_seed, knobs=knobs, train=train,
                     device=device)
    quiet = quiet or as_json
    report = run_bench(spec, out, say=None if quiet else _echo_err, note=echo_warning, progress=not quiet)
    if as_json:
        return print_json(report)
    from cbmctl.cli.common import console
    from cbmctl.demo.bench_render import bench_footer, bench_tables
    for table in bench_tables(report):
        console().print(table)
    for line in bench_footer(report, report["folder"]):
        console().print(line, markup=False, highlight=False)


def _echo_err(line: str) -> None:
    click.echo(line, err=True)


# the world knobs are `demo make`'s own options, whichever it has: a bench world is any world make makes
bench.params.extend(param for param in make.params if param.name not in ("directory", "seed", "preset",
                                                                          "images_per_class", "quiet"))
