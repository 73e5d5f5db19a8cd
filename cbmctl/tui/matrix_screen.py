"""Class × concept matrix screen: heat map, sorting, text filter, hiding all-zero concepts, and the
selected class's concepts (all of them when its row is sparse, with the bias) in a side panel."""
from __future__ import annotations

import numpy as np
from rich.console import Group
from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, Header, Input, Static

from cbmctl.tui.matrix_view import MatrixView
from cbmctl.tui.text import plain

COLUMN_SORTS = ("name", "weight", "sparsity")
ROW_SORTS = ("name", "weight", "sparsity")
SORT_NAMES = {"name": "name", "weight": "|weight|", "sparsity": "most used"}
TOP = 8           # dense rows: this many largest positive and negative weights in the side panel
LIST_ALL = 40     # a row with at most this many non-zero weights (and some zeros) is listed whole


def sparsity_order(matrix: np.ndarray, axis: int) -> np.ndarray:
    """Most-used first: count of entries above 1e-3 of the largest magnitude, along an axis."""
    magnitude = np.abs(matrix)
    used = (magnitude > 1e-3 * magnitude.max()).sum(axis=axis) if matrix.size else np.zeros(0)
    return np.argsort(-used, kind="stable")


def side_panel_width(screen_width: int) -> int:
    """A quarter of the screen, between 28 and 48 cells: room for long concept names on wide terminals."""
    return max(28, min(48, screen_width // 4))


def pack(phrases: list[Text], width: int, gap: int = 2) -> Text:
    """Phrases joined by `gap` spaces, starting a new line where the next phrase would not fit."""
    result, used = Text(), 0
    for phrase in phrases:
        if used and used + gap + phrase.cell_len > width:
            result.append("\n")
            used = 0
        elif used:
            result.append(" " * gap)
            used += gap
        result.append_text(phrase)
        used += phrase.cell_len
    return result


class MatrixScreen(Screen):
    BINDINGS = [
        Binding("s", "sort_columns", "sort concepts"),
        Binding("r", "sort_rows", "sort classes"),
        Binding("t", "toggle_matrix", "matrix"),
        Binding("z", "toggle_zero", "zeros"),
        Binding("slash", "search", "filter"),
        Binding("escape", "clear_search", "clear", show=False),
    ]

    def __init__(self, data, **kwargs):
        super().__init__(**kwargs)
        self.data = data
        self.matrix_names = list(data.matrices)
        self.matrix_name = self.matrix_names[0]
        self.column_sort = "name"
        self.row_sort = "name"
        self.filter_text = ""
        # a sparse head's matrix is mostly zeros: start with the concepts no class shown uses hidden
        self.hide_zero = data.head_kind == "sparse"
        self.hidden = 0                                  # all-zero columns (hidden or not) among those shown
        self.panel_rows: list[tuple[str, float]] = []    # the (concept, weight) pairs the side panel lists

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal():
            with Vertical(id="matrix-pane"):
                yield Static(id="matrix-status")
                yield MatrixView(self.data.matrices[self.matrix_name], self.data.classes, self.data.concepts,
                                 id="matrix")
                yield Input(placeholder="filter concepts and classes (Enter applies, Esc clears)", id="search")
            with VerticalScroll(id="side-panel"):
                yield Static(id="side-content")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#search", Input).display = False
        self.apply()
        self.set_focus(self.view)

    @property
    def view(self) -> MatrixView:
        return self.query_one(MatrixView)

    @property
    def matrix(self) -> np.ndarray:
        return self.data.matrices[self.matrix_name]

    def apply(self) -> None:
        """Recompute the visible row and column orders from the filter, the zero-column switch and the sorts."""
        matrix = self.matrix
        rows = np.arange(matrix.shape[0])
        columns = np.arange(matrix.shape[1])
        text = self.filter_text.lower().strip()
        if text:
            matching_rows = [i for i in rows if text in self.data.classes[i].lower()]
            matching_columns = [j for j in columns if text in self.data.concepts[j].lower()]
            if matching_rows:
                rows = np.array(matching_rows)
            if matching_columns:
                columns = np.array(matching_columns)
            if not matching_rows and not matching_columns:
                rows, columns = rows[:0], columns[:0]
        used = (matrix[np.ix_(rows, columns)] != 0).any(axis=0) if len(rows) else np.zeros(len(columns), bool)
        self.hidden = int((~used).sum())
        if self.hide_zero:
            columns = columns[used]
        selected = self.view.selected
        if self.column_sort == "name":
            columns = columns[np.argsort([self.data.concepts[j].lower() for j in columns], kind="stable")]
        elif self.column_sort == "weight" and selected is not None:
            # by magnitude: a class's negative weights (evidence against it) come before its unused concepts
            columns = columns[np.argsort(-np.abs(matrix[selected[0], columns]), kind="stable")]
        elif self.column_sort == "sparsity":
            columns = columns[sparsity_order(matrix[np.ix_(rows, columns)], 0)]
        if self.row_sort == "name":
            rows = rows[np.argsort([self.data.classes[i].lower() for i in rows], kind="stable")]
        elif self.row_sort == "weight" and selected is not None:
            rows = rows[np.argsort(-np.abs(matrix[rows, selected[1]]), kind="stable")]
        elif self.row_sort == "sparsity":
            rows = rows[sparsity_order(matrix[np.ix_(rows, columns)], 1)]
        self.view.set_orders(rows, columns)
        self.update_status()
        if not len(rows) or not len(columns):
            self.panel_rows = []
            self.query_one("#side-content", Static).update(Text("nothing matches the filter (Esc clears it)"))

    def update_status(self) -> None:
        """One line of phrases about what is shown, packed onto as many lines as the width needs, never
        breaking a phrase."""
        view, total = self.view, self.matrix.shape[1]
        shown = len(view.column_order)
        phrases = [Text(self.matrix_name, style="bold"),
                   Text(f"{len(view.row_order)} classes × {shown}" + (f" of {total}" if shown < total else "")
                        + " concepts")]
        if self.hidden and self.hide_zero:
            phrases.append(Text(f"{self.hidden} all-zero hidden (z shows)", style="yellow"))
        elif self.hidden:
            phrases.append(Text(f"{self.hidden} all-zero (z hides)"))
        phrases.append(Text(f"sort: concepts {SORT_NAMES[self.column_sort]}, classes {SORT_NAMES[self.row_sort]}"))
        if self.filter_text:
            phrases.append(Text.assemble("filter: ", plain(self.filter_text, "bold")))
        status = self.query_one("#matrix-status", Static)
        status.update(pack(phrases, status.content_size.width or 200))

    def on_resize(self, event) -> None:
        self.query_one("#side-panel").styles.width = side_panel_width(event.size.width)
        self.call_after_refresh(self.update_status)

    def on_matrix_view_cursor_moved(self, message: MatrixView.CursorMoved) -> None:
        self.show_class(message.row, message.column)

    def listed_concepts(self, class_index: int) -> tuple[str, list[tuple[int, float]]]:
        """(heading, [(concept, weight)]) for the side panel: every non-zero weight of a sparse row, largest
        first; otherwise the TOP largest positive, then the TOP most negative weights."""
        row = self.matrix[class_index]
        nonzero = np.flatnonzero(row)
        if len(nonzero) < len(row) and len(nonzero) <= LIST_ALL:
            order = nonzero[np.argsort(-row[nonzero], kind="stable")]
            return f"all {len(nonzero)} non-zero weights", [(int(j), float(row[j])) for j in order]
        order = np.argsort(-row, kind="stable")
        positive = [(int(j), float(row[j])) for j in order[:TOP] if row[j] > 0]
        negative = [(int(j), float(row[j])) for j in order[::-1][:TOP] if row[j] < 0]
        return f"top {len(positive)} positive, top {len(negative)} negative of {len(nonzero)}", positive + negative

    def show_class(self, class_index: int, concept_index: int) -> None:
        heading, listed = self.listed_concepts(class_index)
        self.panel_rows = [(self.data.concepts[j], value) for j, value in listed]
        table = Table(show_header=False, box=None, expand=True, padding=(0, 0, 0, 1))
        table.add_column("concept", ratio=1, overflow="fold")
        table.add_column("weight", justify="right", no_wrap=True)
        for j, value in listed:
            table.add_row(plain(self.data.concepts[j]), Text(f"{value:+.3f}", style="green" if value > 0 else "red"))
        bias = self.data.biases.get(self.matrix_name)
        if bias is not None:
            table.add_row(Text("bias", style="italic"), Text(f"{float(bias[class_index]):+.3f}"))
        value = float(self.matrix[class_index, concept_index])
        cell = Text.assemble(("cell ", "bold"), plain(self.data.concepts[concept_index]), "\n",
                             (f"{value:+.4f}" if value else "0 (not used by this class)", "bold"),
                             f"  ({self.matrix_name})")
        self.query_one("#side-content", Static).update(Group(
            plain(self.data.classes[class_index], "bold underline"), Text(heading, style="dim"), table, Text(""),
            cell))

    def action_sort_columns(self) -> None:
        self.column_sort = COLUMN_SORTS[(COLUMN_SORTS.index(self.column_sort) + 1) % len(COLUMN_SORTS)]
        self.apply()

    def action_sort_rows(self) -> None:
        self.row_sort = ROW_SORTS[(ROW_SORTS.index(self.row_sort) + 1) % len(ROW_SORTS)]
        self.apply()

    def action_toggle_matrix(self) -> None:
        if len(self.matrix_names) == 1:
            self.notify("this view has one matrix", timeout=3)
            return
        self.matrix_name = self.matrix_names[(self.matrix_names.index(self.matrix_name) + 1) % len(self.matrix_names)]
        self.view.set_matrix(self.matrix)
        self.apply()

    def action_toggle_zero(self) -> None:
        self.hide_zero = not self.hide_zero
        self.apply()
        if not self.hidden:
            self.notify("no concept is zero in every class shown", timeout=3)

    def action_search(self) -> None:
        search = self.query_one("#search", Input)
        search.display = True
        search.value = self.filter_text
        self.set_focus(search)  # now, not after a refresh: keys typed right after "/" belong to the filter

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.filter_text = event.value
        event.input.display = False
        self.apply()
        self.set_focus(self.view)

    def action_clear_search(self) -> None:
        self.filter_text = ""
        self.query_one("#search", Input).display = False
        self.apply()
        self.set_focus(self.view)
