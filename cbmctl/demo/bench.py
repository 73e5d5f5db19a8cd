"""`cbmctl demo bench`: worlds as a random factor. Makes W demo worlds of one preset (their seeds derived
from one base seed), embeds each with the demo CLIP, trains every CBL objective and baseline × S seeds on
each (one stacked `train --compare all`, cbmctl.experiment), the plain CBM again with a random CBL init,
and runs every CMS variant and zero-shot CLIP (seed-independent: one value per world). What it concludes
is cbmctl.demo.bench_report's; this module runs the worlds and keeps the folder:

    OUT/bench-options.json       what the folder was made with (a rerun with other options is refused)
    OUT/world-K/demo/            the demo world;  OUT/world-K/cache.h5  its embeddings
    OUT/world-K/runs/compare/    `train --compare all` (its own run directory, replayable with --config)
    OUT/world-K/runs/random-init/  the plain CBM with --cbl-init random
    OUT/world-K/result.json      the world's summary, written (atomically) when the world is finished
    OUT/bench.json, OUT/forest.png   the report

A rerun of the same command continues: finished worlds are read back, an interrupted one resumes from
what it has (the world, the embedding journal, the training checkpoint)."""
from __future__ import annotations

import contextlib
import hashlib
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from cbmctl import runs
from cbmctl.demo.bench_report import RANDOM_INIT
from cbmctl.errors import CbmctlError
from cbmctl.sanitize import require_plain_folder
from cbmctl.spec import BASELINES, MAX_SEEDS, METHODS, TrainConfig

FORMAT, VERSION = "cbmctl-bench", 1
OPTIONS_FILE, RESULT_FILE, REPORT_FILE, FOREST_FILE = "bench-options.json", "result.json", "bench.json", "forest.png"
MIN_WORLDS, MAX_WORLDS, MIN_SEEDS = 2, 50, 2
MAX_METRIC = 1e6  # bound on any metric read back from a world's result.json (pooling squares them)
# the base of the worlds' seeds: used for nothing else in cbmctl's docs, tests or benchmarks
DEFAULT_WORLD_SEED = 1800
TRAIN_OPTIONS = ("epochs", "min_epochs", "patience", "batch_size")


@dataclass(frozen=True)
class BenchSpec:
    preset: str = "default"
    worlds: int = 3
    seeds: int = 5
    world_seed: int = DEFAULT_WORLD_SEED
    knobs: dict = field(default_factory=dict)  # world knobs as `demo make` takes them (None: the preset's)
    train: dict = field(default_factory=dict)  # TRAIN_OPTIONS given (None: `cbmctl train`'s defaults)
    device: str = "auto"


def check_spec(spec: BenchSpec):
    """(the worlds' WorldSpec, the TrainConfig of every model), or a one-line error for any bad option."""
    from cbmctl.demo.presets import resolve_spec
    from cbmctl.demo.world import MAX_SEED
    for name, value in (("`worlds`", spec.worlds), ("`seeds`", spec.seeds), ("`world_seed`", spec.world_seed)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise CbmctlError(f"{name} must be a whole number, got {value!r}")
    if not MIN_WORLDS <= spec.worlds <= MAX_WORLDS:
        raise CbmctlError(f"`worlds` {spec.worlds}: between {MIN_WORLDS} and {MAX_WORLDS} (a pooled interval over "
                          "worlds needs at least 2)")
    if not MIN_SEEDS <= spec.seeds <= MAX_SEEDS:
        raise CbmctlError(f"`seeds` {spec.seeds}: between {MIN_SEEDS} and {MAX_SEEDS} (a paired interval per world "
                          "needs at least 2)")
    if not 0 <= spec.world_seed <= MAX_SEED:
        raise CbmctlError(f"`world_seed` {spec.world_seed}: between 0 and {MAX_SEED}")
    given = {k: v for k, v in spec.knobs.items() if v is not None}
    world_spec = resolve_spec(spec.preset, **given)
    if world_spec.train_per_class < 2:
        raise CbmctlError("`train_per_class` must be at least 2: a validation image per species is carved out of them")
    options = {k: v for k, v in spec.train.items() if v is not None}
    unknown = sorted(set(options) - set(TRAIN_OPTIONS))
    if unknown:
        raise CbmctlError(f"unknown training option {unknown[0]!r} ({', '.join(TRAIN_OPTIONS)})")
    config = TrainConfig.from_mapping({**options, "device": spec.device})  # checks every option and pairing
    return world_spec, config


def world_seeds(base: int, count: int) -> list[int]:
    """World k's seed: the first 4 bytes of sha256('cbmctl-bench-world:BASE:k'); world k is the same world
    whatever the number of worlds, and no two bases share a sequence the way BASE + k would."""
    return [int.from_bytes(hashlib.sha256(f"cbmctl-bench-world:{base}:{k}".encode()).digest()[:4], "big")
            for k in range(1, count + 1)]


def default_out(spec: BenchSpec) -> Path:
    return Path("bench") / f"{spec.preset}-{spec.worlds}worlds-{spec.seeds}seeds"


def identity(spec: BenchSpec, world_spec, config: TrainConfig) -> dict:
    """What makes two invocations the same benchmark (the device is not part of it)."""
    train = {k: v for k, v in asdict(config).items() if k not in ("loss", "seed", "device")}
    return {"format": FORMAT, "version": VERSION, "preset": spec.preset, "worlds": spec.worlds,
            "seeds": list(range(spec.seeds)), "world_seed": spec.world_seed,
            "world_seeds": world_seeds(spec.world_seed, spec.worlds), "knobs": world_spec.knobs(), "train": train}


def _first_difference(old, new, where: str = "") -> str | None:
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new), key=str):
            found = _first_difference(old.get(key), new.get(key), f"{where}.{key}" if where else str(key))
            if found:
                return found
        return None
    return None if old == new else f"{where}: {str(old)[:40]} there, {str(new)[:40]} here"


def claim_folder(out: Path, wanted: dict) -> bool:
    """Make OUT a bench folder for `wanted`, or check that it is one made with the same options. True when
    it already was (a resumed bench)."""
    path = out / OPTIONS_FILE
    if path.is_file():
        recorded = runs.read_json(path, "bench options")
        difference = _first_difference(recorded, wanted)
        if difference:
            raise CbmctlError(f"{out} holds a bench made with other options ({difference}); rerun with its options "
                              "to resume it, or give another `out`")
        return True
    if out.is_dir() and any(p for p in out.iterdir() if not p.name.startswith(".")):
        raise CbmctlError(f"{out} exists and is not a bench folder (no {OPTIONS_FILE}); give another `out`")
    runs.write_json(path, wanted)
    return False


class _Backbone:
    """The demo CLIP, loaded once and only when a world still needs embedding."""

    def __init__(self, device: str):
        self.device, self.loaded = device, None

    def get(self):
        if self.loaded is None:
            from cbmctl.backbones import load_backbone
            from cbmctl.demo.backbone import DEMO_MODEL
            self.loaded = load_backbone(DEMO_MODEL, None, self.device)
        return self.loaded


@dataclass
class _World:
    index: int
    seed: int
    folder: Path
    say: object

    @property
    def data(self) -> Path:
        return self.folder / "demo"

    @property
    def cache(self) -> Path:
        return self.folder / "cache.h5"

    @property
    def result(self) -> Path:
        return self.folder / RESULT_FILE


def run_world(world: _World, spec: BenchSpec, world_spec, config: TrainConfig, backbone: _Backbone,
              progress: bool, warn) -> dict:
    """One world from start (or from where an interrupted bench left it) to its summary."""
    seconds, reused = {}, []
    with _timed(seconds, "make"):
        if not _make(world, spec, world_spec):
            reused.append("make")
    with _timed(seconds, "embed"):
        if not _embed(world, backbone, progress):
            reused.append("embed")
    cache, concept_set, data = _training_data(world, backbone, config)
    seeds = list(range(spec.seeds))
    with _timed(seconds, "train"):
        world.say(f"training {len(METHODS)} methods × {len(seeds)} seeds on concept set '{concept_set.name}' "
                  f"({len(data.concepts)} concepts)")
        values, labels = _train(world, data, config, list(METHODS), seeds, "compare", warn)
    with _timed(seconds, "random_init"):
        world.say(f"training the plain CBM with a random CBL init × {len(seeds)} seeds")
        random_init, _ = _train(world, data, replace(config, cbl_init="random"), ["none"], seeds, "random-init", warn)
        values[RANDOM_INIT], labels[RANDOM_INIT] = random_init["none"], "none (random CBL init)"
    with _timed(seconds, "cms"):
        world.say("Concept Matrix Search and zero-shot CLIP")
        from cbmctl.cms import cms_report
        cms = cms_report(cache, concept_set, "test", random_control=False, device=config.device)
    result = {"format": f"{FORMAT}-world", "version": VERSION, "index": world.index, "seed": world.seed,
              "seeds": seeds, "values": values, "labels": labels,
              "cms": {row["method"]: row["top1"] for row in cms["rows"]},
              "concept_set": {"name": concept_set.name, "size": len(data.concepts)},
              "test_images": int(cms["images"]), "seconds": seconds, "reused": reused}
    check_world_result(result, world, spec.seeds, str(world.result))
    runs.write_json(world.result, result)
    return result


@contextlib.contextmanager
def _timed(seconds: dict, stage: str):
    """Wall seconds of a stage into seconds[stage], this process's CPU seconds (all its threads) into
    seconds['cpu'][stage]: on a busy machine the CPU time is what tells the cost an idle one would see."""
    started, cpu = time.monotonic(), time.process_time()
    yield
    seconds[stage] = time.monotonic() - started
    seconds.setdefault("cpu", {})[stage] = time.process_time() - cpu


def _make(world: _World, spec: BenchSpec, world_spec) -> bool:
    """Make the world unless an earlier run made it (then check it is this bench's); True when made now."""
    if (world.data / "world.json").is_file():
        _check_world(world, world_spec)
        return False
    from cbmctl.demo.world import make_world
    world.say("making the world")
    make_world(world.data, seed=world.seed, preset=spec.preset, **{k: v for k, v in spec.knobs.items() if v is not None})
    return True


def _embed(world: _World, backbone: _Backbone, progress: bool) -> bool:
    """Embed the world (an interrupted embed resumes from its journal); True when embedded now."""
    if world.cache.is_file():
        return False
    from cbmctl.datasets import load_dataset
    from cbmctl.embed import embed_dataset
    dataset = load_dataset(world.data)
    world.say(f"embedding {dataset.summary()} with the demo CLIP")
    embed_dataset(dataset, backbone.get(), world.cache, workers=0, progress=progress)
    return True


def _training_data(world: _World, backbone: _Backbone, config: TrainConfig):
    """(cache, the world's default concept set, TrainingData)."""
    from cbmctl.cache import open_cache
    from cbmctl.concepts import encode_concepts
    from cbmctl.datasets import load_config
    from cbmctl.identity import text_key
    from cbmctl.preflight import resolve_concepts
    from cbmctl.training import prepare_data
    cache = open_cache(world.cache)
    concept_set = resolve_concepts(None, load_config(world.data), cache)
    if cache.text(text_key(cache.attrs, concept_set.concepts)) is None:
        # with the CLIP already loaded for embedding, rather than a second copy of it loaded from the cache
        encode_concepts(backbone.get(), concept_set, world.cache)
    return cache, concept_set, prepare_data(cache, concept_set, device=config.device)


def _check_world(world: _World, world_spec) -> None:
    """An existing world folder must be the world this bench would make."""
    from cbmctl.demo.presets import read_world_spec
    seed, found = read_world_spec(world.data)
    if seed != world.seed or found != world_spec:
        raise CbmctlError(f"{world.data} holds another world than this bench makes (seed {seed}, preset "
                          f"{found.preset}); remove it to make it again")


def _train(world: _World, data, config: TrainConfig, methods: list[str], seeds: list[int], name: str, warn):
    """One stacked `train --compare` into world-K/runs/NAME (resumed from its checkpoint, or read back when it
    finished): per method the per-seed test metrics, and the methods' labels."""
    import torch

    from cbmctl.experiment import run_experiment
    from cbmctl.spec import ExperimentSpec
    run_dir = world.folder / "runs" / name
    if runs.is_finished(run_dir):
        rows = runs.read_metrics(run_dir).get("rows")
    else:
        spec = ExperimentSpec(train=config, methods=methods, seeds=seeds, data=str(world.data.resolve()),
                              cache_path=str(world.cache.resolve()))
        run_dir.mkdir(parents=True, exist_ok=True)
        # the stacked trainer seeds torch's global generator; the caller's stream is left as it was
        with torch.random.fork_rng(devices=[]):
            rows = run_experiment(data, config, methods, seeds, run_dir, spec.as_mapping(), log=None, warn=warn,
                                  figures=False).rows
    if not isinstance(rows, list):
        raise CbmctlError(f"{run_dir}: its metrics.json holds no comparison rows; remove the run to redo it")
    # a metric that is not a finite number for every seed (nothing to measure) is left out, not pooled
    values = {row.get("loss"): {key: cell["values"] for key, cell in row.items() if isinstance(cell, dict)
                                and isinstance(cell.get("values"), list) and all(map(finite, cell["values"]))}
              for row in rows if isinstance(row, dict)}
    return values, {row.get("loss"): str(row.get("method")) for row in rows if isinstance(row, dict)}


def finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_world_result(result, world: _World, seeds: int, where: str) -> dict:
    """A world summary read back (or about to be written): the structure the report relies on, finite
    numbers, one value per seed (or one for a seed-independent baseline); else a one-line error."""
    def refuse(problem: str):
        raise CbmctlError(f"{where}: not this bench's result for world {world.index} ({problem}); remove it to "
                          "redo the world")
    if not isinstance(result, dict) or result.get("format") != f"{FORMAT}-world" or result.get("version") != VERSION:
        refuse("unknown format")
    if result.get("index") != world.index or result.get("seed") != world.seed:
        refuse("another world's index or seed")
    if result.get("seeds") != list(range(seeds)):
        refuse("other seeds")
    values, cms = result.get("values"), result.get("cms")

    def measured(v) -> bool:  # every metric pooled here is a share, an entropy or a Hoyer value: small
        return finite(v) and abs(v) <= MAX_METRIC
    if not isinstance(values, dict) or "none" not in values or not all(
            isinstance(metrics, dict) and all(isinstance(v, list) and len(v) in ((1, seeds) if method in BASELINES
                                                                                  else (seeds,))
                                              and all(map(measured, v)) for v in metrics.values())
            for method, metrics in values.items()):
        refuse("'values' must give each method's metrics, one number per seed (one for a seed-independent "
               f"baseline), each finite and within ±{MAX_METRIC:g}")
    if not isinstance(cms, dict) or not all(isinstance(k, str) and measured(v) for k, v in cms.items()):
        refuse("'cms' must map CMS rows to finite accuracies")
    _check_record_fields(result, refuse)
    return result


def _check_record_fields(result: dict, refuse) -> None:
    """The fields that the tables print: labels (text), seconds per stage (numbers, CPU seconds likewise),
    the stages reused (text) and the concept set (name and size)."""
    labels, seconds = result.get("labels"), result.get("seconds")
    if not isinstance(labels, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items()):
        refuse("'labels' must map methods to text")
    cpu = seconds.get("cpu", {}) if isinstance(seconds, dict) else None
    if not isinstance(cpu, dict) or not all(
            finite(v) and v >= 0 for part in (seconds, cpu) for k, v in part.items() if k != "cpu"):
        refuse("'seconds' must give each stage's seconds as numbers")
    reused, concept_set = result.get("reused", []), result.get("concept_set")
    if not isinstance(reused, list) or not all(isinstance(v, str) for v in reused):
        refuse("'reused' must list stages")
    if concept_set is not None and not (isinstance(concept_set, dict) and isinstance(concept_set.get("name"), str)
                                        and isinstance(concept_set.get("size"), int)):
        refuse("'concept_set' must give a name and a size")


def run_bench(spec: BenchSpec, out=None, say=None, note=None, progress: bool = False) -> dict:
    """The whole benchmark into OUT (default_out(spec) when None); returns bench.json's content. `say` gets
    the progress lines (world k/W: stage), `note` what was decided for the user (the folder, the worlds'
    seeds) and the warnings (`say` when not given); `progress` shows the embedding's progress bar."""
    from cbmctl.files import file_lock
    from cbmctl.logs import sayer
    say = sayer(say)
    warn = note or say
    world_spec, config = check_spec(spec)
    out = Path(out) if out is not None else default_out(spec)
    require_plain_folder(out, "`out`")
    from cbmctl.backbones import resolve_device
    device = str(resolve_device(config.device))  # an unusable --device is an error before any world is made
    runs.check_writable(out, "the bench")
    wanted = identity(spec, world_spec, config)
    with file_lock(out, wait=False, doing="benchmarking in"):
        resumed = claim_folder(out, wanted)
        warn(f"{'resuming the bench' if resumed else 'bench'} in {out}: preset {spec.preset}, {spec.worlds} worlds "
            f"× {spec.seeds} seeds; world seeds {', '.join(map(str, wanted['world_seeds']))} (from base "
            f"{spec.world_seed})")
        backbone, results = _Backbone(config.device), []
        for index, seed in enumerate(wanted["world_seeds"], 1):
            results.append(_one_world(index, seed, out, spec, world_spec, config, backbone, say, warn, progress))
        report = assemble(wanted, results, out, device)
        runs.write_json(out / REPORT_FILE, report)
        from cbmctl.demo.bench_report import forest_panels
        from cbmctl.render_forest import plot_forest
        plot_forest(out / FOREST_FILE, forest_panels(report),
                    f"cbmctl demo bench: preset {spec.preset}, {spec.worlds} worlds × {spec.seeds} seeds")
    return report


def _one_world(index, seed, out, spec, world_spec, config, backbone, say, warn, progress) -> dict:
    prefix = f"world {index}/{spec.worlds} (seed {seed})"
    world = _World(index, seed, out / f"world-{index}", lambda line: say(f"{prefix}: {line}"))
    if (world.result.exists() or world.result.is_symlink()) and not world.result.is_file():
        # a directory, pipe or dangling link in its place: neither a finished world nor one to overwrite after minutes
        raise CbmctlError(f"{world.result} is not a file; move it away and run the bench again")
    if world.result.is_file():
        result = check_world_result(runs.read_json(world.result, "bench world result"), world, spec.seeds,
                                    str(world.result))
        world.say(f"finished earlier, not redone ({world.result})")
        return result
    started = time.monotonic()
    result = run_world(world, spec, world_spec, config, backbone, progress, lambda line: warn(f"{prefix}: {line}"))
    from cbmctl.demo.bench_render import stage_times
    world.say(f"done in {time.monotonic() - started:.1f} s; seconds wall (CPU): {stage_times(result['seconds'])}")
    return result


def assemble(wanted: dict, results: list[dict], out: Path, device: str) -> dict:
    """bench.json: the options and provenance, each world's seed, concept set and timings, and the analysis."""
    from cbmctl.demo.bench_report import summarise
    worlds = [{"index": r["index"], "seed": r["seed"], "folder": str(out / f"world-{r['index']}"),
               "concept_set": r.get("concept_set"), "test_images": r.get("test_images"), "seconds": r["seconds"],
               "reused": r.get("reused", []), "cms": r["cms"]} for r in results]
    return {**wanted, "folder": str(out), "device": device, "versions": runs.versions(), "per_world": worlds,
            **summarise(results)}
