"""Images screen: the split's images with true and predicted class; for the selected image, per class
(the predicted one, and the true one when it differs) the concepts behind its logit: activation a,
the head's input x (standardised for a sparse head), weight F[c, j] and contribution x·F[c, j], with the
bias, so that the rows add up to the logit. With a sparse head these are exactly the concepts the class's
row uses; with the dense head (and CMS) every active concept contributes, the largest are listed and the
rest summed in one row."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass

import numpy as np
from rich.console import Group
from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Static

from cbmctl.sanitize import safe_text
from cbmctl.tui.text import cut, longest, plain

FILTERS = ("all", "correct", "incorrect")
LISTED = 15          # dense head / CMS: contributions listed per class before the rest is summed
ACTIVATIONS = 40     # the selected image's activation vector: this many strongest units listed
NARROW = 110         # below this many columns the detail goes under the list instead of beside it
DETAIL_MIN = 76      # beside the list, the detail keeps at least this many columns (its table's width)


@dataclass
class Breakdown:
    """Why class `class_index` got its logit for one image: rows of concept contributions."""
    class_index: int
    role: str                                   # "predicted", "true", or "predicted = true"
    rows: list[dict]                            # concept, activation, input, weight, contribution, score
    others: int = 0                             # contributing concepts not listed ...
    others_sum: float = 0.0                     # ... and the sum of their contributions
    bias: float | None = None
    logit: float | None = None                  # Σ every contribution + bias (None for CMS: a cosine decides)


def breakdown(data, image: int, class_index: int, role: str, limit: int = LISTED) -> Breakdown:
    """The contributions x_j · F[c, j] to one class's logit, largest first (data.active_concepts decides
    which concepts contribute: a sparse row's non-zero weights, else the non-zero activations)."""
    contributions = data.contributions(image, class_index)
    inputs = data.inputs if data.inputs is not None else data.activations
    concepts = data.active_concepts(image, (class_index,))
    concepts = sorted(concepts, key=lambda j: -float(contributions[j]))
    listed = concepts if data.head_kind == "sparse" else concepts[:limit]
    rows = [{"concept": data.concepts[j], "activation": float(data.activations[image, j]),
             "input": float(inputs[image, j]), "weight": float(data.head[class_index, j]),
             "contribution": float(contributions[j]), "score": float(data.scores[image, j])} for j in listed]
    # everything not listed, so that the rows, this and the bias add up to the logit exactly
    rest = np.ones(len(contributions), bool)
    rest[listed] = False
    bias = data.biases.get("head")
    result = Breakdown(class_index, role, rows, len(concepts) - len(listed),
                       float(np.sum(contributions[rest], dtype=np.float64)))
    if data.head_kind != "cms":
        result.bias = float(bias[class_index]) if bias is not None else 0.0
        result.logit = float(np.sum(contributions, dtype=np.float64)) + result.bias
    return result


def viewer_command() -> list[str] | None:
    if sys.platform == "darwin":
        return ["open"]
    if sys.platform.startswith("win"):
        return ["cmd", "/c", "start", ""]
    if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return None  # xdg-open "succeeds" on a headless machine (ssh, tmux on a server) without showing anything
    for program in ("xdg-open", "gio"):
        path = shutil.which(program)
        if path:
            return [path, "open"] if program == "gio" else [path]
    return None


def concept_name(concept: str, head: str, head_input: float | None) -> Text:
    """A concept's name, marked "(absent)" where its contribution is evidence from its absence (the same
    predicate as explain's table and PNG)."""
    from cbmctl.render import absence_evidence
    name = plain(concept)
    if absence_evidence(head, head_input):
        name.append(" (absent)", style="dim")
    return name


def column_legend(head: str) -> Text:
    """What the detail's columns mean, in one dim paragraph."""
    if head == "cms":
        return Text("V = cos: the image's cosine with the concept · T: the class's cosine with the concept · "
                    "V·T: their product, what the class's score sums", style="dim")
    sparse = head == "sparse"
    parts = ["a: the CBL unit's activation"]
    if sparse:
        parts.append("x=(a−μ)/σ: a standardised with its train mean μ and spread σ, what the sparse head weighs")
    parts += ["F: the head's weight of the concept for the class",
              f"{'x·F' if sparse else 'a·F'}: the concept's contribution to the class's logit",
              "CLIP ψ: the concept's raw CLIP score"]
    if sparse:
        parts.append("(absent): the contribution comes from the concept being weaker than its train mean (x < 0)")
    return Text(" · ".join(parts), style="dim")


def _signed(value: float, digits: int = 3) -> Text:
    colour = "green" if value > 0 else "red" if value < 0 else "grey50"
    return Text(f"{value:+.{digits}f}", style=colour)


class ImagesScreen(Screen):
    BINDINGS = [
        Binding("c", "cycle_filter", "all / correct / incorrect"),
        Binding("o", "open_image", "open image"),
    ]

    def __init__(self, data, **kwargs):
        super().__init__(**kwargs)
        self.data = data
        self.filter = "all"
        self.rows: list[int] = []
        self.shown: list[Breakdown] = []  # what the detail shows for the selected image
        self.selected: int | None = None
        self.widths: tuple[int, int] | None = None  # (class name, file name) column widths of the list

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal(id="images-body"):
            yield DataTable(id="images", cursor_type="row", zebra_stripes=True)
            with VerticalScroll(id="image-detail"):
                yield Static(id="detail-content")
        yield Footer()

    def on_mount(self) -> None:
        if self.data.labels is None:
            self.query_one("#detail-content", Static).update(plain(self.data.summary.get("note", "no images to show")))
            return
        self.query_one(DataTable).focus()

    def on_resize(self, event) -> None:
        narrow = event.size.width < NARROW
        self.set_class(narrow, "-narrow")
        if self.data.labels is None:
            return
        width = event.size.width if narrow else self.list_width(event.size.width)
        self.query_one(DataTable).styles.width = "1fr" if narrow else width
        widths = self.column_widths(width)
        if widths != self.widths:
            self.widths = widths
            self.fill()

    def _name_lengths(self) -> tuple[int, int]:
        data = self.data
        return (longest(safe_text(c) for c in data.classes),
                longest(safe_text(p.rsplit("/", 1)[-1]) for p in data.paths[:2000]))

    def _fixed_width(self) -> int:
        """#, conf, cell padding (2 per column, 4 columns) and the scrollbar."""
        return len(str(len(self.data.labels))) + 6 + 4 * 2 + 2

    def list_width(self, screen: int) -> int:
        """Beside the detail: what the list needs for whole names, between 40 % of the screen and all but
        DETAIL_MIN cells."""
        names, files = self._name_lengths()
        needed = self._fixed_width() + 2 * names + files + 2
        return max(screen * 2 // 5, min(needed, screen - DETAIL_MIN))

    def column_widths(self, width: int) -> tuple[int, int]:
        """(class name, file name) widths for a list `width` cells wide: the class names whole when they
        fit; the file name (also shown whole in the detail) gets what is left, or no column (0)."""
        names, files = self._name_lengths()
        room = width - self._fixed_width()
        name = max(8, min(names, room // 2))
        left = room - 2 * name - 2
        return name, min(files, left) if left >= 8 else 0

    def fill(self) -> None:
        table = self.query_one(DataTable)
        table.clear(columns=True)
        name_width, file_width = self.widths
        table.add_column("#")
        table.add_column("conf")
        table.add_column("true", width=name_width)
        table.add_column("predicted", width=name_width)
        if file_width:
            table.add_column("image", width=file_width)
        data = self.data
        correct = data.predicted == data.labels
        keep = {"all": lambda i: True, "correct": lambda i: correct[i], "incorrect": lambda i: not correct[i]}[self.filter]
        self.rows = [i for i in range(len(data.labels)) if keep(i)]
        names = [Text(cut(safe_text(c), name_width)) for c in data.classes]
        for i in self.rows:
            mark = Text.assemble(("✓", "green") if correct[i] else ("✗", "red"), f" {data.confidence[i]:.2f}")
            cells = [str(i), mark, names[data.labels[i]], names[data.predicted[i]]]
            if file_width:
                cells.append(Text(cut(safe_text(data.paths[i].rsplit("/", 1)[-1]), file_width)))
            table.add_row(*cells, key=str(i))
        self.sub_title = (f"{data.split} split: {len(self.rows)} of {len(data.labels)} images ({self.filter}); "
                          f"accuracy {correct.mean():.3f}")
        if self.rows:
            self.show(self.rows[0] if self.selected not in self.rows else self.selected)
            if self.selected in self.rows:
                table.move_cursor(row=self.rows.index(self.selected))
        else:
            self.query_one("#detail-content", Static).update(Text(f"no {self.filter} images"))

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        if event.row_key is not None and event.row_key.value is not None:
            self.show(int(event.row_key.value))

    def show(self, image: int) -> None:
        data = self.data
        self.selected = image
        predicted, true = int(data.predicted[image]), int(data.labels[image])
        if predicted == true:
            self.shown = [breakdown(data, image, predicted, "predicted = true")]
        else:
            self.shown = [breakdown(data, image, predicted, "predicted"), breakdown(data, image, true, "true")]
        heading = Text.assemble(plain(data.paths[image], "bold"), "\ntrue ", plain(data.classes[true], "bold"),
                                "   predicted ", plain(data.classes[predicted], "bold"),
                                f" (p = {data.confidence[image]:.2f})")
        tables = [part for b in self.shown for part in (Text(""), self.render_breakdown(b))]
        parts = [heading, *tables, Text(""), column_legend(data.head_kind)]
        if data.head_kind != "cms":
            parts += [Text(""), self.render_activations(image, predicted)]
        self.query_one("#detail-content", Static).update(Group(*parts))

    def render_activations(self, image: int, predicted: int) -> Table:
        """The image's whole activation vector, strongest first (the first ACTIVATIONS listed), with what
        each unit contributes to the predicted class beside it."""
        data = self.data
        activations = data.activations[image]
        inputs = data.inputs[image] if data.inputs is not None else activations
        contributions = data.contributions(image, predicted)
        order = np.argsort(-activations, kind="stable")
        sparse = data.head_kind == "sparse"
        more = len(order) - ACTIVATIONS
        title = Text.assemble(("activations of this image", "bold"), f" ({len(order)} units, strongest first"
                              + (f"; {more} more below" if more > 0 else "") + ")")
        table = Table(title=title, title_justify="left", box=None, padding=(0, 1), header_style="bold")
        table.add_column("concept", overflow="fold")
        for header in ("a",) + (("x",) if sparse else ()) + ("→ " + safe_text(data.classes[predicted])[:20],):
            table.add_column(header, justify="right", no_wrap=True)
        for j in order[:ACTIVATIONS]:
            used = data.head[predicted, j] != 0
            cells = [Text(f"{activations[j]:.3f}")] + ([Text(f"{inputs[j]:+.2f}")] if sparse else [])
            cells.append(_signed(float(contributions[j])) if used else Text("·", style="grey50"))
            table.add_row(concept_name(data.concepts[j], data.head_kind, float(inputs[j]) if used else None), *cells)
        return table

    def render_breakdown(self, part: Breakdown) -> Table:
        data = self.data
        cms = data.head_kind == "cms"
        title = Text.assemble(("→ ", "bold"), plain(data.classes[part.class_index], "bold"), f" ({part.role})")
        if part.logit is not None:
            title.append(f"   logit {part.logit:+.3f}")
        table = Table(title=title, title_justify="left", box=None, padding=(0, 1), header_style="bold")
        table.add_column("concept", overflow="fold")
        columns = [("V = cos", "activation"), ("T", "weight"), ("V·T", "contribution")] if cms else \
            [("a", "activation")] + ([("x", "input")] if data.head_kind == "sparse" else []) + \
            [("F", "weight"), ("x·F" if data.head_kind == "sparse" else "a·F", "contribution"), ("CLIP ψ", "score")]
        for header, _ in columns:
            table.add_column(header, justify="right", no_wrap=True)
        for row in part.rows:
            table.add_row(concept_name(row["concept"], data.head_kind, row["input"]),
                          *[_signed(row[key]) if key in ("weight", "contribution") else Text(f"{row[key]:.3f}")
                            for _, key in columns])
        blank = [""] * (len(columns) - 1)
        contribution_at = [key for _, key in columns].index("contribution")

        def total_row(label: str, value: float, style: str = "italic") -> None:
            cells = list(blank)
            cells.insert(contribution_at, _signed(value))
            table.add_row(Text(label, style=style), *cells)

        if part.others:
            total_row(f"{part.others} other active concepts", part.others_sum)
        if part.bias is not None and (part.bias != 0 or data.head_kind == "sparse"):
            total_row("bias", part.bias)
        if part.logit is not None:
            total_row("= logit", part.logit, "bold")
        return table

    def action_cycle_filter(self) -> None:
        self.filter = FILTERS[(FILTERS.index(self.filter) + 1) % len(FILTERS)]
        if self.data.labels is not None:
            self.fill()

    def action_open_image(self) -> None:
        if self.selected is not None:
            open_image(self, self.data.image_path(self.selected))


def open_image(screen, path) -> None:
    """Open an image file in the system's viewer, or say on `screen` why not (no file, no viewer)."""
    if path is None or not path.is_file():
        screen.notify("this image is not a file on disk (e.g. a CIFAR batch row)", severity="warning")
        return
    shown = safe_text(path)
    command = viewer_command()
    if command is None:
        screen.notify(f"no image viewer here (no display, or no xdg-open); the file is {shown}", severity="warning",
                      timeout=8, markup=False)
        return
    try:
        subprocess.Popen(command + [str(path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    except OSError as error:
        screen.notify(f"could not open the viewer ({safe_text(error)}); the file is {shown}", severity="warning",
                      markup=False)
        return
    screen.notify(f"opened {safe_text(path.name)}", markup=False)
