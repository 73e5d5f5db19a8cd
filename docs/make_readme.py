"""Regenerate every number, table and measured sentence of README.md from the commands that produce them.

    python docs/make_readme.py [--readme README.md] [--seeds 10] [--only NAME,...]

Each generated block of the README sits between `<!-- BEGIN GENERATED: NAME -->` and
`<!-- END GENERATED: NAME -->` and starts with the commands that made it; everything runs offline on the
cub-like demo world of seed 4242 (one the shipped CLIP and the tests never used; the quickstart's is seed
0), in a temporary folder (or --work DIR, kept, so that an interrupted run resumes its benchmark), with
this interpreter's cbmctl. About 40 minutes on 2 idle CPU cores, most of it the 5-world benchmark (block
'claims'). The text outside the markers is written by hand and carries no measured numbers."""
from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))

from common import cbmctl, cbmctl_json  # noqa: E402

from cbmctl.demo.bench_render import claims_markdown  # noqa: E402
from cbmctl.render import compare_cells, markdown_table, significance_sentence  # noqa: E402

WORLD_SEED = 4242
BENCH_WORLDS = 5
FOREST = ROOT / "docs" / "bench-forest.png"
# the method tables' world (the classic 30 species); demo eval and CMS also run on the cub-like world
WORLD = ["demo", "make", "W", "--seed", str(WORLD_SEED)]
MAKE_WORLD = "cbmctl " + " ".join(WORLD)
CUB_WORLD = ["demo", "make", "CUB", "--preset", "cub-like", "--seed", str(WORLD_SEED)]
MAKE_CUB_WORLD = "cbmctl " + " ".join(CUB_WORLD)


def fenced(commands: list[str], body: str, language: str = "") -> str:
    shown = "\n".join(f"$ {c}" for c in commands)
    return f"```{language}\n{shown}\n{body.rstrip()}\n```\n"


def commands_line(commands: list[str]) -> str:
    return "Made by: " + "; ".join(f"`{c}`" for c in commands) + "\n\n"


def percent(value: float) -> str:
    return f"{100 * value:.1f}"


class Blocks:
    """Each generator fills one README block; they share the worlds and runs they make."""

    def __init__(self, work: Path, seeds: int):
        self.work, self.seeds = work, seeds
        self._made: dict[str, object] = {}

    def once(self, key: str, make):
        if key not in self._made:
            self._made[key] = make()
        return self._made[key]

    def world(self) -> None:
        if not (self.work / "W" / "world.json").is_file():
            self.once("world", lambda: cbmctl(WORLD, self.work))

    def cub_world(self) -> None:
        if not (self.work / "CUB" / "world.json").is_file():
            self.once("cub world", lambda: cbmctl(CUB_WORLD, self.work))

    def train(self, *args) -> dict:
        self.world()
        key = "train " + " ".join(map(str, args))
        return self.once(key, lambda: cbmctl_json(["train", "W", *args, "-q", "--out", "runs"], self.work))

    # ---- the blocks -------------------------------------------------------------------------------------
    def _quickstart(self, *args):
        """`cbmctl quickstart` run as a newcomer runs it: in an empty folder, without arguments."""
        (self.work / "qs").mkdir(exist_ok=True)
        return cbmctl(["quickstart", *args], self.work / "qs")

    def quickstart(self) -> str:
        out, err, _ = self._quickstart()
        steps = [line for line in err.splitlines() if line.startswith(("[", "      ")) and "%|" not in line]
        return fenced(["cbmctl quickstart"], "\n".join(steps))

    def demo_eval(self) -> str:
        self.world()
        self.cub_world()
        classic, cub = (cbmctl_json(["demo", "eval", name], self.work) for name in ("W", "CUB"))

        def cells(report, key):
            return f"{report[key]['accuracy']:.3f}" if key in report else ""
        rows = [[f"zero-shot {family} ({v['values']} values)", f"{v['accuracy']:.3f}",
                 f"{cub['families'][family]['accuracy']:.3f}", f"{v['chance']:.3f}"]
                for family, v in classic["families"].items()]
        rows.append(["zero-shot species from class names", cells(classic, "zero_shot_class"), cells(cub, "zero_shot_class"),
                     f"{classic['zero_shot_class']['chance']:.3f} / {cub['zero_shot_class']['chance']:.3f}"])
        rows.append(["linear probe, species (L2 chosen by val loss)", cells(classic, "linear_probe_class"),
                     cells(cub, "linear_probe_class"), ""])
        rows.append(["species ceiling (Bayes-optimal from the true attributes)",
                     f"{classic['class_ceiling']['expected']:.3f}", f"{cub['class_ceiling']['expected']:.3f}", ""])
        llm = cub["concept_sets"]["llm"]
        rows.append([f"description baseline, the cub-like world's LLM-like set ({llm['concepts']} concepts)", "",
                     f"{llm['description_baseline']:.3f}", f"{cub['zero_shot_class']['chance']:.3f}"])
        for name, row in cub["concept_sets"].items():
            rows.append([f"CLIP concept precision@5, set '{name}' ({row['concepts']} concepts, "
                         f"{row['true_of_no_image']} true of no image)", "", f"{row['precision@5']:.3f}", ""])
        return (commands_line([MAKE_WORLD, MAKE_CUB_WORLD, "cbmctl demo eval W", "cbmctl demo eval CUB"])
                + f"On each world's test images ({classic['images']} classic, {cub['images']} cub-like):\n\n"
                + markdown_table(["task", "classic world (default preset)", "cub-like world", "chance"], rows))

    def compare(self) -> str:
        trained = self.train("--compare", "all", "--seeds", self.seeds)
        headers, body = compare_cells(trained["rows"])
        rows = {r["loss"]: r for r in trained["rows"]}
        text = commands_line([MAKE_WORLD, f"cbmctl train W --compare all --seeds {self.seeds}"])
        text += markdown_table(headers, body) + "\n"
        for key, what in (("top1", "top-1 of the sparse head (NEC = 5, the default head)"),
                          ("dense_top1", "top-1 of the dense head")):
            text += significance_sentence(trained["rows"], key, what) + "\n\n"
        none, probe = rows["none"], rows["linear-probe"]
        gap = none["dense_top1"]["mean"] - probe["top1"]["mean"]
        text += (f"The plain CBM's dense head is {abs(100 * gap):.1f} points {'above' if gap >= 0 else 'below'} "
                 f"the linear probe ({percent(none['dense_top1']['mean'])} % against "
                 f"{percent(probe['top1']['mean'])} %); its sparse head keeps 5 concepts per class at "
                 f"{percent(none['top1']['mean'])} %. Calibration (ECE, 15 bins) of the default run's head: "
                 f"{rows['gumbel']['ece']['mean']:.3f}.\n")
        return text

    def defaults(self) -> str:
        ours = self.train("--loss", "gumbel", "--seeds", self.seeds)
        paper = self.train("--loss", "gumbel", "--seeds", self.seeds, "--lr", "1e-4", "--cbl-lr", "1e-4", "--head",
                           "dense")
        body = []
        for label, result in (("cbmctl defaults (lr 1e-3, sparse head)", ours),
                              ("the paper's (lr 1e-4, dense head)", paper)):
            row = result["rows"][0]
            body.append([label, f"{percent(row['top1']['mean'])}", f"{percent(row['dense_top1']['mean'])}",
                         f"{percent(row['nec5_top1']['mean'])}", f"{row['ece']['mean']:.3f}",
                         f"{row['cbl_change']['mean']:.2f}"])
        return (commands_line([f"cbmctl train W --loss gumbel --seeds {self.seeds}",
                               f"cbmctl train W --loss gumbel --seeds {self.seeds} --lr 1e-4 --cbl-lr 1e-4 --head dense"])
                + markdown_table(["settings", "top-1 (run's head)", "dense head", "NEC = 5", "ECE",
                                  "CBL change ‖W−I‖/‖I‖"], body))

    def gumbel_forms(self) -> str:
        variants = [("paper form, τ = 1 (default)", []), ("paper form, τ = 0.1", ["--tau", "0.1"]),
                    ("paper form, hard samples, τ = 0.5", ["--hard", "--tau", "0.5"]),
                    ("reference form (the public code)", ["--gumbel-form", "reference"])]
        body, commands = [], []
        for label, extra in variants:
            result = self.train("--compare", "gumbel,none", "--seeds", self.seeds, *extra)
            row = result["rows"][0]
            difference = row["vs_none"]["top1"]
            body.append([label, percent(row["top1"]["mean"]),
                         f"{100 * difference['mean']:+.1f} [{100 * difference['ci_low']:+.1f}, "
                         f"{100 * difference['ci_high']:+.1f}]{'*' if difference['significant'] else ''}",
                         percent(row["dense_top1"]["mean"]), percent(row["concept_precision@5"]["mean"]),
                         f"{row['entropy_mean']['mean']:.3f}", f"{row['hoyer_mean']['mean']:.3f}"])
            commands.append(f"cbmctl train W --compare gumbel,none --seeds {self.seeds} {' '.join(extra)}".rstrip())
        gumbel, none = self.train("--compare", "gumbel,none", "--seeds", self.seeds)["rows"]
        body.append(["none (no CBL objective)", percent(none["top1"]["mean"]), "-", percent(none["dense_top1"]["mean"]),
                     percent(none["concept_precision@5"]["mean"]), f"{none['entropy_mean']['mean']:.3f}",
                     f"{none['hoyer_mean']['mean']:.3f}"])

        def interval(cell):
            return f"{cell['mean']:.3f} [{cell['ci_low']:.3f}, {cell['ci_high']:.3f}]"

        sparser = (gumbel["entropy_mean"]["ci_high"] < none["entropy_mean"]["ci_low"]
                   and gumbel["hoyer_mean"]["ci_low"] > none["hoyer_mean"]["ci_high"])
        denser = (gumbel["entropy_mean"]["ci_low"] > none["entropy_mean"]["ci_high"]
                  and gumbel["hoyer_mean"]["ci_high"] < none["hoyer_mean"]["ci_low"])
        verdict = ("sparser than" if sparser else "denser than" if denser else "not clearly sparser or denser than")
        sentence = (f"\nWith the default form, Sparse-CBM's activations are {verdict} the plain CBM's here: "
                    f"normalised entropy {interval(gumbel['entropy_mean'])} against {interval(none['entropy_mean'])}, "
                    f"Hoyer {interval(gumbel['hoyer_mean'])} against {interval(none['hoyer_mean'])} (lower entropy "
                    "and higher Hoyer mean sparser; 95 % intervals over seeds).\n")
        return commands_line(commands) + markdown_table(
            ["Sparse-CBM loss", "top-1 (NEC = 5)", "Δ vs none [95 %]", "dense head", "concept p@5",
             "activation entropy", "Hoyer"], body) + sentence

    def init(self) -> str:
        identity = self.train("--loss", "none", "--seeds", self.seeds)["rows"][0]
        random = self.train("--loss", "none", "--seeds", self.seeds, "--cbl-init", "random")["rows"][0]
        body = [[name, percent(row["concept_precision@5"]["mean"]), percent(row["top1"]["mean"]),
                 percent(row["dense_top1"]["mean"])] for name, row in (("identity (cbmctl)", identity),
                                                                      ("random (the reference code)", random))]
        return (commands_line([f"cbmctl train W --loss none --seeds {self.seeds}",
                               f"cbmctl train W --loss none --seeds {self.seeds} --cbl-init random"])
                + markdown_table(["CBL initialisation", "concept precision@5", "top-1 (NEC = 5)", "dense head"], body))

    def l1(self) -> str:
        body, commands = [], []
        for strength in ("0.001", "0.1", "1"):
            row = self.train("--loss", "l1", "--l1-lambda", strength, "--seeds", self.seeds)["rows"][0]
            body.append([strength, f"{row['cbl_offdiagonal']['mean']:.2f}", f"{row['cbl_change']['mean']:.2f}",
                         percent(row["dense_top1"]["mean"]), percent(row["top1"]["mean"])])
            commands.append(f"cbmctl train W --loss l1 --l1-lambda {strength} --seeds {self.seeds}")
        none = self.train("--loss", "none", "--seeds", self.seeds)["rows"][0]
        body.append(["none", f"{none['cbl_offdiagonal']['mean']:.2f}", f"{none['cbl_change']['mean']:.2f}",
                     percent(none["dense_top1"]["mean"]), percent(none["top1"]["mean"])])
        return commands_line(commands) + markdown_table(
            ["l1 λ", "CBL weight off the diagonal", "CBL change", "dense head", "top-1 (NEC = 5)"], body)

    def faithfulness(self) -> str:
        body, commands = [], []
        for cutoff in ("-1", "0.5", "0.9"):
            result = self.train("--compare", "gumbel,none", "--seeds", self.seeds, "--faithfulness-cutoff", cutoff)
            commands.append(f"cbmctl train W --compare gumbel,none --seeds {self.seeds} --faithfulness-cutoff {cutoff}")
            for row in result["rows"]:
                body.append([cutoff + (" (default)" if cutoff == "0.5" else ""), row["method"],
                             percent(row["top1"]["mean"]), percent(row["explanation_precision@5"]["mean"]),
                             f"{row['faithful_units']['mean']:.1f}", f"{row['ece']['mean']:.3f}"])
        return commands_line(commands) + markdown_table(
            ["cutoff", "method", "top-1 (NEC = 5)", "expl. p@5", f"units offered (of {self.concept_count()})", "ECE"],
            body)

    def concept_count(self) -> int:
        self.world()
        return json.loads((self.work / "W" / "world.json").read_text())["concept_sets"]["clean"]["size"]

    def cms(self) -> str:
        self.cub_world()
        sets = [("LLM-like set", "llm"), ("clean set (22 attributes + 11 distractors)", "clean"),
                ("distractors (stress test)", "distractors")]
        results = {key: {r["method"]: r for r in cbmctl_json(["cms", "CUB", "--concepts", key], self.work)["rows"]}
                   for _, key in sets}
        methods = list(dict.fromkeys(m for rows in results.values() for m in rows))
        body = [[method + (" (transductive)" if any(rows.get(method, {}).get("transductive") for rows in
                                                   results.values()) else "")]
                + [percent(results[key][method]["top1"]) if method in results[key] else "-" for _, key in sets]
                for method in methods]
        return (commands_line([MAKE_CUB_WORLD] + [f"cbmctl cms CUB --concepts {key}" for _, key in sets])
                + markdown_table(["method"] + [f"top-1, {label}" for label, _ in sets], body))

    def claims(self) -> str:
        """The paper's claims pooled over worlds (`cbmctl demo bench`), the forest plot copied beside this
        script. The bench folder lives in the work folder, so an interrupted regeneration resumes it."""
        command = ["demo", "bench", "--preset", "cub-like", "--worlds", str(BENCH_WORLDS), "--seeds", str(self.seeds),
                   "--out", "bench"]
        report = cbmctl_json([*command, "--json"], self.work)
        shutil.copyfile(self.work / "bench" / "forest.png", FOREST)
        methods = "\n\n".join(report["conclusions"][:len(report["methods"])])
        worlds = ", ".join(map(str, report["world_seeds"]))
        return (commands_line(["cbmctl " + " ".join(command)])
                + f"{BENCH_WORLDS} cub-like worlds (seeds {worlds}, from the bench's own base seed) × "
                  f"{self.seeds} training seeds; every effect in points of test accuracy unless it is an entropy "
                  "or Hoyer value, with its pooled 95 % interval.\n\n"
                + claims_markdown(report) + "\n"
                + methods + "\n\n" + f"Estimator: {report['estimator']}\n\n"
                + "![forest plot: every method's and every claim's effect per world and pooled]"
                + f"({FOREST.relative_to(ROOT).as_posix()})\n")

    def explain(self) -> str:
        # quickstart (run by its own block, or here) leaves a trained run and names a test image it explains
        image = json.loads(self._quickstart("--json")[0])["image"]
        out, _, _ = cbmctl(["explain", image, "--top-k", "6"], self.work / "qs")
        return fenced([f"cbmctl explain {image} --top-k 6"], out)


    def explain_unit(self) -> str:
        # the quickstart's run, as in the explain block: one concept unit and its top images
        self._quickstart("--json")
        command = ["explain", "--unit", "star shape", "--top-k", "6"]
        out, _, _ = cbmctl(command, self.work / "qs")
        return fenced(["cbmctl " + " ".join(c if " " not in c else f'"{c}"' for c in command)], out)


def replace_block(text: str, name: str, body: str) -> str:
    pattern = re.compile(rf"(<!-- BEGIN GENERATED: {re.escape(name)} -->\n).*?(<!-- END GENERATED: "
                         rf"{re.escape(name)} -->)", re.S)
    if not pattern.search(text):
        raise SystemExit(f"README has no block {name!r}")
    return pattern.sub(lambda m: m.group(1) + body.rstrip() + "\n" + m.group(2), text)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readme", default=str(ROOT / "README.md"))
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--only", default=None, help="Comma-separated block names (default: all).")
    parser.add_argument("--work", default=None, help="Keep the worlds and runs in this folder (default: a temporary one).")
    args = parser.parse_args(argv)
    names = ["quickstart", "demo-eval", "compare", "defaults", "gumbel-forms", "init", "faithfulness", "l1", "cms",
             "explain", "explain-unit", "claims"]
    wanted = args.only.split(",") if args.only else names
    readme = Path(args.readme)
    text = readme.read_text(encoding="utf-8")
    with tempfile.TemporaryDirectory() as folder:
        work = Path(args.work) if args.work else Path(folder)
        work.mkdir(parents=True, exist_ok=True)
        blocks = Blocks(work, args.seeds)
        for name in wanted:
            print(f"== {name}", file=sys.stderr, flush=True)
            text = replace_block(text, name, getattr(blocks, name.replace("-", "_"))())
    readme.write_text(text, encoding="utf-8")
    print(f"wrote {readme}", file=sys.stderr)


if __name__ == "__main__":
    main()
