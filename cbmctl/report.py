"""`cbmctl report`: one self-contained HTML page about a run or a comparison, to hand to a colleague.

It holds the configuration and backbone, both heads' metrics (and for a comparison the table with 95 %
intervals and the sentences saying which differences are significant), the run's plots, the class × concept
weights, every concept unit the head uses with its top images, and explanations of a few correct and wrong
test images. Everything is inside the one file (images as data URIs, no script, a policy that forbids any
fetch), so it opens offline and sends nothing anywhere. Built from the run directory and its cache only:
no backbone is loaded."""
from __future__ import annotations

import csv
import io
from datetime import datetime
from pathlib import Path

import numpy as np
import torch

from cbmctl import runs
from cbmctl.errors import CbmctlError
from cbmctl.html_page import Raw, data_uri, heat, image_uri, page, png_file_uri, table, text

MATRIX_CLASSES = 60    # the class × concept matrix is drawn as a table up to this many classes ...
MATRIX_CONCEPTS = 80   # ... and this many concepts the head uses; beyond, each class lists its concepts
REPORT_UNITS = 60      # units whose top images are shown (the most used first)
HEAD_KEYS = (("top1", "top-1", True), ("top5", "top-5", True), ("mean_per_class", "mean per class", True),
             ("ece", "ECE", False), ("nll", "NLL", False))
PLOTS = ((runs.CURVES_FILE, "Training curves (the validation loss picks the epoch)"),
         (runs.SPARSITY_FILE, "Accuracy against sparsity (NEC) of the sparse head, and the dense head"),
         (runs.ACTIVATIONS_PLOT, "How sparse the CBL activations are, per test image"))


def weights_csv(classes: list[str], concepts: list[str], weights: np.ndarray, bias: np.ndarray) -> str:
    """The head's class × concept weights as CSV: one row per class (its weight on every concept, then its
    bias). Names are data, never formulas: one a spreadsheet would evaluate (=, +, -, @ first) gets a
    leading apostrophe, and control characters are shown as escapes."""
    from cbmctl.sanitize import safe_text

    def cell(name: str) -> str:
        name = safe_text(name)
        return "'" + name if name[:1] in ("=", "+", "-", "@") else name
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["class"] + [cell(c) for c in concepts] + ["bias"])
    for k, name in enumerate(classes):
        writer.writerow([cell(name)] + [f"{w + 0.0:.6g}" for w in weights[k]] + [f"{float(bias[k]) + 0.0:.6g}"])
    return buffer.getvalue()


def _number(value, percent: bool = False) -> str:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return "-"
    return f"{100 * value:.2f} %" if percent else f"{value:.4g}"


def _section(record, key) -> dict:
    value = record.get(key) if isinstance(record, dict) else None
    return value if isinstance(value, dict) else {}


class ReportBuilder:
    """The pieces of one report; `html()` assembles them. `log` gets one line per stage."""

    def __init__(self, run_dir: Path, split: str = "test", unit_images: int = 8, examples: int = 3, log=None):
        from cbmctl.explain import Explainer
        from cbmctl.logs import sayer
        self.say = sayer(log)
        self.run_dir, self.split, self.unit_images, self.examples = Path(run_dir), split, unit_images, examples
        self.explainer = Explainer.from_run(self.run_dir)
        self.meta = self.explainer.metadata
        self.metrics = runs.read_metrics(self.run_dir) if (self.run_dir / runs.METRICS_FILE).is_file() else {}
        self.record = self._optional_json(runs.RECORD_FILE) or {k: self.meta.get(k) for k in
                                                                ("backbone", "dataset", "concept_set", "cache")}
        self.config = runs.read_yaml(self.run_dir / runs.CONFIG_FILE) if (self.run_dir / runs.CONFIG_FILE).is_file() \
            else _section(self.meta, "train_config")
        rows = self.metrics.get("rows")
        self.rows = rows if isinstance(rows, list) and all(isinstance(r, dict) for r in rows) else []
        self.notes: list[str] = []

    def _optional_json(self, name: str):
        path = self.run_dir / name
        return runs.read_json(path, name) if path.is_file() else None

    @property
    def comparison(self) -> bool:
        return len(self.rows) > 1

    # --- sections --------------------------------------------------------------------------------------
    def run_section(self) -> str:
        backbone, dataset = _section(self.record, "backbone"), _section(self.record, "dataset")
        concepts = _section(self.record, "concept_set")
        seed = _section(self.meta, "train_config").get("seed")
        facts = [("run", str(self.run_dir)),
                 ("model shown", f"{self.meta.get('method')}, seed {seed}, {self.explainer.model.head_kind} head"),
                 ("dataset", f"{dataset.get('dataset_name')} ({dataset.get('dataset_root')})"),
                 ("dataset fingerprint", str(dataset.get("dataset_fingerprint", ""))[:16]),
                 ("backbone", f"{backbone.get('backbone_model')} / {backbone.get('backbone_pretrained')}"),
                 ("weights sha256", str(backbone.get("weights_sha256", ""))[:16]),
                 ("concept set", f"{concepts.get('name')} ({len(self.explainer.concepts)} concepts, sha256 "
                                 f"{str(concepts.get('sha256', ''))[:12]})"),
                 ("classes", str(len(self.explainer.classes)))]
        versions = _section(self.record, "versions") or _section(self.meta, "versions")
        if versions:
            facts.append(("versions", ", ".join(f"{k} {v}" for k, v in versions.items() if k != "platform")))
        config = [(str(k), ", ".join(map(str, v)) if isinstance(v, list) else str(v)) for k, v in self.config.items()]
        return (table(["", ""], facts, text_columns=2) + "<h3>Configuration</h3>"
                + table(["option", "value"], config, text_columns=2))

    def results_section(self) -> str:
        from cbmctl.render import compare_cells, significance_sentence
        parts = []
        if self.comparison:
            headers, body = compare_cells(self.rows)
            parts.append("<h3>Comparison on the test split</h3>" + table(headers, body))
            parts.append('<p class="note">mean over seeds ± half-width of the 95 % interval; Δ vs none: paired '
                         "difference in test top-1 to the plain CBM (same seeds and split), * = significant after "
                         "Holm's correction over the methods compared.</p>")
            for key, what in (("top1", "test top-1 of the run's head"), ("dense_top1", "test top-1 of the dense head")):
                sentence = significance_sentence(self.rows, key, what)
                if sentence:
                    parts.append(f"<p>{text(sentence)}</p>")
        metrics = {**_section(self.meta, "metrics"), **self.metrics} if not self.comparison else \
            _section(self.meta, "metrics")
        parts.append(f"<h3>Both heads{' of the model shown' if self.comparison else ''}</h3>" + self._heads(metrics))
        accuracy = _section(metrics, "nec_accuracy") or _section(self.metrics, "nec_accuracy")
        if accuracy:
            rows = [[f"NEC {k}", _number(v, True)] for k, v in accuracy.items()]
            rows.append(["ANEC (mean)", _number(metrics.get("anec", self.metrics.get("anec")), True)])
            parts.append("<h3>Sparse head by NEC budget (test)</h3>" + table(["budget", "top-1"], rows))
        return "".join(parts)

    def _heads(self, metrics: dict) -> str:
        rows = []
        sparse = _section(metrics, "sparse")
        for kind, record in (("dense", _section(metrics, "dense")), (f"sparse, NEC {sparse.get('nec', '?')}", sparse)):
            for split in ("val", "test"):
                values = _section(record, split)
                if values:
                    mark = " (the run's model)" if kind.startswith(self.explainer.model.head_kind) else ""
                    rows.append([kind + mark, split] + [_number(values.get(k), p) for k, _, p in HEAD_KEYS])
        return table(["head", "split"] + [label for _, label, _ in HEAD_KEYS], rows, text_columns=2) if rows else \
            '<p class="note">no metrics recorded</p>'

    def plots_section(self) -> str:
        parts = []
        for name, caption in PLOTS:
            uri = png_file_uri(self.run_dir / name)
            if uri:
                parts.append(f"<h3>{text(caption)}</h3><img class=\"plot\" alt=\"{text(name)}\" src=\"{uri}\">")
            elif (self.run_dir / name).exists():
                parts.append(f'<p class="note">{text(name)} is not a PNG cbmctl drew: left out</p>')
        return "".join(parts) or '<p class="note">this run directory holds no plots</p>'

    def weights_section(self) -> str:
        head = self.explainer.model.class_concept_weights().numpy()
        bias = self.explainer.model.head.bias.detach().numpy()
        concepts, classes = self.explainer.concepts, self.explainer.classes
        csv_text = weights_csv(classes, concepts, head, bias)
        link = (f'<p><a download="{text(self.run_dir.name)}-weights.csv" href="{data_uri(csv_text.encode(), "text/csv")}">'
                f"the class × concept weights as CSV</a> (one row per class; <code>cbmctl report --weights-csv</code> "
                "writes the same file)</p>")
        used = np.flatnonzero((head != 0).any(axis=0))
        if len(classes) <= MATRIX_CLASSES and len(used) <= MATRIX_CONCEPTS:
            scale = float(np.abs(head).max()) or 1.0
            header = "<tr><th></th>" + "".join(f'<th class="concept">{text(concepts[j])}</th>' for j in used) + "</tr>"
            body = "".join(
                f'<tr><th class="text">{text(name)}</th>' + "".join(
                    f'<td style="background:{heat(float(head[k, j]), scale)}">{f"{head[k, j]:+.2f}" if head[k, j] else ""}</td>'
                    for j in used) + "</tr>" for k, name in enumerate(classes))
            matrix = f'<table class="matrix">{header}{body}</table>'
        else:
            matrix = '<p class="note">too large for one table: each class with its non-zero weights</p>' + table(
                ["class", "concepts (weight)", "bias"],
                [[name, ", ".join(f"{concepts[j]} {head[k, j]:+.2f}" for j in np.argsort(-np.abs(head[k]))[:12]
                                  if head[k, j]), f"{bias[k]:+.2f}"] for k, name in enumerate(classes)], 2)
        unused = len(concepts) - len(used)
        note = f'<p class="note">{len(used)} of {len(concepts)} concepts are used by some class' + \
            (f"; the {unused} others are left out" if unused else "") + ".</p>"
        return link + note + matrix

    def units_section(self, report) -> str:
        from cbmctl.render_units import head_use, percent, unit_heading
        from cbmctl.units import order_by_use
        ordered = order_by_use(report.units)
        summary = table(["concept", "faithfulness", "head", "in top 5", f"top {self.unit_images} show it", "all show it"],
                        [[u.concept, f"{u.faithfulness:.3f}" + ("" if u.offered else " (below cutoff)"),
                          head_use(report, u), percent(u.top5_rate), percent(u.truth_share), percent(u.truth_rate)]
                         for u in ordered])
        used = [u for u in ordered if u.classes_using]
        shown = used[:REPORT_UNITS]
        self.say(f"report: top images of {len(shown)} concept unit(s)")
        blocks = [f"<h3>{text(u.concept)}</h3><p class=\"note\">{text(unit_heading(report, u))}</p>"
                  + self._thumbs(report, u) for u in shown]
        more = f'<p class="note">{len(used) - len(shown)} more used units are in the table above.</p>' \
            if len(used) > len(shown) else ""
        notes = "".join(f'<p class="note">{text(n)}</p>' for n in report.notes)
        return (f'<p class="note">faithfulness: the unit\'s correlation with its concept\'s CLIP score on the train '
                f"split; in top 5: the share of {report.split} images with the unit among their 5 strongest; "
                "show it: the share that truly show the concept (ground truth).</p>" + notes + summary
                + "<h3>Top images of each unit the head uses</h3>" + "".join(blocks) + more)

    def _thumbs(self, report, unit) -> str:
        figures = []
        for image in unit.top:
            css = {True: "shows", False: "missing"}.get(image.shows, "")
            figures.append(f"<figure class=\"thumb\">{self._image(report.dataset_root, image.path, css)}"
                           f"<figcaption>{text(image.label)}<br>a = {image.activation:.2f}</figcaption></figure>")
        return f'<div class="thumbs">{"".join(figures)}</div>'

    def _image(self, root, path: str, css: str = "") -> str:
        from cbmctl.images import thumbnail
        picture = thumbnail(root, path)
        if picture is None:
            return f'<span class="note">(no image file: {text(path)})</span>'
        return f'<img class="{css}" alt="{text(path)}" src="{image_uri(picture)}">'

    def examples_section(self, data, outputs, root) -> str:
        from cbmctl.render import absence_evidence
        _, _, logits = outputs
        predicted = logits.argmax(axis=1)
        confidence = torch.from_numpy(logits).softmax(dim=1).max(dim=1).values.numpy()
        correct = predicted == data.labels
        chosen = []
        for wanted in (True, False):
            pool = np.flatnonzero(correct == wanted)
            seen: set[int] = set()  # one image per true class: a few examples should show a few classes
            for i in pool[np.argsort(-confidence[pool], kind="stable")]:
                if len(seen) < self.examples and int(data.labels[i]) not in seen:
                    seen.add(int(data.labels[i]))
                    chosen.append((int(i), wanted))
        parts = []
        for index, right in chosen:
            features = torch.from_numpy(data.embeddings[index:index + 1].astype(np.float32))
            classes = [None] if right else [None, self.explainer.classes[int(data.labels[index])]]
            tables = []
            for class_name in classes:
                result = self.explainer.explain(features, [data.paths[index]], top_k=8, class_name=class_name)[0]
                largest = max((abs(r.contribution) for r in result.concepts), default=1.0) or 1.0
                rows = [[Raw(text(r.concept) + (' <span class="absent">(absent)</span>'
                                                if absence_evidence(result.head, r.head_input) else "")),
                         Raw(f'<span class="bar" style="width:{round(80 * abs(r.contribution) / largest)}px;'
                             f'background:{"#2e7d32" if r.contribution >= 0 else "#c62828"}"></span> '
                             f'<span class="{"pos" if r.contribution >= 0 else "neg"}">{r.contribution:+.3f}</span>'),
                         f"{r.activation:.3f}", f"{r.weight:+.3f}", f"{r.score:.2f}"] for r in result.concepts]
                caption = (f"→ {result.explained_class}: logit {result.logit:+.3f}"
                           + (f" (bias {result.bias:+.3f})" if result.head == "sparse" else ""))
                tables.append(f"<p><b>{text(caption)}</b></p>" + table(
                    ["concept", "contribution", "activation", "head weight", "CLIP ψ"], rows, 2))
            title = (f"{'correct' if right else 'wrong'}: {data.paths[index]} — true "
                     f"{self.explainer.classes[int(data.labels[index])]}, predicted "
                     f"{self.explainer.classes[int(predicted[index])]} (p = {confidence[index]:.2f})")
            parts.append(f"<h3>{text(title)}</h3><div class=\"example\">{self._image(root, data.paths[index])}"
                         f"<div>{''.join(tables)}</div></div>")
        return ('<p class="note">the most confident correct and wrong predictions of the split, one per true class; '
                '"(absent)": the contribution comes from the concept being weaker than its train mean.</p>'
                + "".join(parts))

    # --- the page --------------------------------------------------------------------------------------
    def html(self) -> str:
        from cbmctl.explain import open_run_cache
        from cbmctl.units import split_outputs, units_of_run
        sections = [("run", "Run, data and backbone", self.run_section()),
                    ("results", "Results", self.results_section()),
                    ("plots", "Plots", self.plots_section()),
                    ("weights", "Class × concept weights", self.weights_section())]
        try:
            cache = open_run_cache(self.meta, self.run_dir)
        except CbmctlError as error:
            missing = f'<p class="note">{text(error)}</p>'
            sections += [("units", "Concept units", missing), ("examples", "Explained images", missing)]
        else:
            data = cache.split(self.split)
            self.say(f"report: the model on the {len(data.labels)} {self.split} images, faithfulness on train")
            outputs = split_outputs(self.explainer, data.embeddings, self.say)
            report = units_of_run(self.run_dir, self.explainer, cache, self.split, data, outputs[0], outputs[1],
                                  self.unit_images, self.say)
            sections += [("units", "Concept units", self.units_section(report)),
                         ("examples", f"Explained {self.split} images",
                          self.examples_section(data, outputs, report.dataset_root))]
        kind = "comparison" if self.comparison else "run"
        title = f"cbmctl report — {kind} {self.run_dir.name}"
        from cbmctl import __version__
        return page(title, sections, f"made by cbmctl {__version__} on {datetime.now():%Y-%m-%d %H:%M} from "
                                     f"{self.run_dir}; one self-contained file, nothing is fetched")


def build_report(run_dir, split: str = "test", unit_images: int = 8, examples: int = 3, log=None) -> str:
    """The report of a run or comparison directory as one HTML document (see the module docstring)."""
    return ReportBuilder(run_dir, split, unit_images, examples, log).html()


def run_weights_csv(run_dir) -> str:
    """weights_csv of a run's model."""
    from cbmctl.explain import Explainer
    explainer = Explainer.from_run(Path(run_dir))
    model = explainer.model
    return weights_csv(explainer.classes, explainer.concepts, model.class_concept_weights().numpy(),
                       model.head.bias.detach().numpy())
