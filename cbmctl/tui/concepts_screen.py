"""Concepts screen: every CBL unit of the run with its faithfulness (correlation with its concept's CLIP
score on train), how the head uses it, how often it is among an image's five strongest units, and where
ground truth exists how many of its top images show the concept; the selected unit's top-activating images
of the split are listed beside, and `o` opens the highlighted one."""
from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Static

from cbmctl.render_units import percent, unit_heading
from cbmctl.tui.text import plain

SORTS = ("use", "faithfulness", "name")


def sort_units(units, key: str):
    if key == "faithfulness":
        return sorted(units, key=lambda u: u.faithfulness)  # the least faithful first: those are worth a look
    if key == "name":
        return sorted(units, key=lambda u: u.concept.lower())
    from cbmctl.units import order_by_use
    return order_by_use(units)


class ConceptsScreen(Screen):
    BINDINGS = [
        Binding("s", "cycle_sort", "sort units"),
        Binding("o", "open_image", "open image"),
        Binding("tab", "switch_table", "units / images", show=False),
    ]

    def __init__(self, data, **kwargs):
        super().__init__(**kwargs)
        self.data = data
        self.sort = "use"
        self.order: list = []      # the units in the order the table lists them
        self.unit = None           # the selected unit

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal(id="concepts-body"):
            with Vertical(id="units-pane"):
                yield DataTable(id="units", cursor_type="row", zebra_stripes=True)
                yield Static(id="units-legend")
            with Vertical(id="unit-detail"):
                yield Static(id="unit-heading")
                yield DataTable(id="unit-images", cursor_type="row", zebra_stripes=True)
        yield Footer()

    @property
    def report(self):
        return self.data.units

    def on_mount(self) -> None:
        if self.report is None:
            note = self.data.summary.get("note") or "no concept units here (a cache alone has no CBL)"
            self.query_one("#unit-heading", Static).update(plain(note))
            return
        self.fill()
        self.query_one("#units", DataTable).focus()

    def fill(self) -> None:
        table = self.query_one("#units", DataTable)
        table.clear(columns=True)
        k = max((len(u.top) for u in self.report.units), default=0)
        for label in ("concept", "faithful", "classes", "Σ|w|", "top 5", f"gt top {k}", "gt all"):
            table.add_column(label)
        self.order = sort_units(self.report.units, self.sort)
        for unit in self.order:
            faithful = Text(f"{unit.faithfulness:.2f}", style="" if unit.offered else "red")
            table.add_row(plain(unit.concept), faithful, Text(str(unit.classes_using)), Text(f"{unit.weight_mass:.2f}"),
                          Text(percent(unit.top5_rate)), Text(percent(unit.truth_share)),
                          Text(percent(unit.truth_rate)), key=str(unit.index))
        report = self.report
        self.sub_title = (f"{len(report.units)} concept units, {report.split} split ({report.images} images); "
                          f"sorted by {self.sort}" + (f"; red: below the cutoff {report.cutoff:g}"
                                                      if report.head == "sparse" else ""))
        self.query_one("#units-legend", Static).update(Text(
            "faithful: correlation of the unit with its concept's CLIP score (train) · classes, Σ|w|: how the head "
            "uses it · top 5: share of images with the unit among their 5 strongest · gt: share of its top images "
            "/ of all images that show the concept (ground truth)", style="dim"))
        if self.order:
            self.show(self.order[0] if self.unit is None else self.unit)
            table.move_cursor(row=self.order.index(self.unit))

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        if event.data_table.id == "units" and event.row_key is not None and event.row_key.value is not None:
            self.show(self.report.units[int(event.row_key.value)])

    def show(self, unit) -> None:
        self.unit = unit
        notes = [Text(f"note: {note}", style="yellow") for note in self.report.notes]
        heading = Text.assemble(plain(unit_heading(self.report, unit)), *[Text("\n") + n for n in notes])
        self.query_one("#unit-heading", Static).update(heading)
        images = self.query_one("#unit-images", DataTable)
        images.clear(columns=True)
        truth = unit.truth_share is not None
        for label in ("#", "a", "ψ") + (("shows it",) if truth else ()) + ("class", "image"):
            images.add_column(label)
        for rank, image in enumerate(unit.top, 1):
            cells = [str(rank), Text(f"{image.activation:.2f}"), Text(f"{image.score:.2f}")]
            if truth:
                cells.append(Text("yes", style="green") if image.shows else Text("no", style="red"))
            images.add_row(*cells, plain(image.label), plain(image.path.rsplit("/", 1)[-1]), key=str(rank - 1))

    def action_cycle_sort(self) -> None:
        if self.report is not None:
            self.sort = SORTS[(SORTS.index(self.sort) + 1) % len(SORTS)]
            self.fill()

    def action_switch_table(self) -> None:
        units, images = self.query_one("#units", DataTable), self.query_one("#unit-images", DataTable)
        (images if units.has_focus else units).focus()

    def action_open_image(self) -> None:
        """Open the top image highlighted in the unit's list (its first when that list has no cursor yet)."""
        from cbmctl.tui.images_screen import open_image
        if self.unit is None or not self.unit.top:
            return
        row = self.query_one("#unit-images", DataTable).cursor_row
        image = self.unit.top[min(max(row, 0), len(self.unit.top) - 1)]
        open_image(self, self.data.image_path_of(image.path))
