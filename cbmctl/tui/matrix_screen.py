"""Class × concept matrix screen: heat map, sorting, text filter, and the selected class's top concepts."""
from __future__ import annotations

import numpy as np
from rich.table import Table
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import Footer, Header, Input, Static

from cbmctl.tui.matrix_view import MatrixView

COLUMN_SORTS = ("name", "weight", "sparsity")
ROW_SORTS = ("name", "weight", "sparsity")


def sparsity_order(matrix: np.ndarray, axis: int) -> np.ndarray:
    """Most-used first: count of entries above 1e-3 of the largest magnitude, along an axis."""
    magnitude = np.abs(matrix)
    used = (magnitude > 1e-3 * magnitude.max()).sum(axis=axis) if matrix.size else np.zeros(0)
    return np.argsort(-used, kind="stable")


class MatrixScreen(Screen):
    BINDINGS = [
        Binding("s", "sort_columns", "sort concepts"),
        Binding("r", "sort_rows", "sort classes"),
        Binding("t", "toggle_matrix", "head / head×CBL"),
        Binding("slash", "search", "search"),
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

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal():
            with Vertical(id="matrix-pane"):
                yield Static(id="matrix-status")
                yield MatrixView(self.data.matrices[self.matrix_name], self.data.classes, self.data.concepts,
                                 id="matrix")
                yield Input(placeholder="filter concepts and classes (Enter applies, Esc clears)", id="search")
            yield Static(id="side-panel")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#search", Input).display = False
        self.apply()
        self.query_one(MatrixView).focus()

    @property
    def view(self) -> MatrixView:
        return self.query_one(MatrixView)

    def apply(self) -> None:
        """Recompute the visible row and column orders from the filter and the sort modes."""
        matrix = self.data.matrices[self.matrix_name]
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
        selected = self.view.selected
        if self.column_sort == "name":
            columns = columns[np.argsort([self.data.concepts[j].lower() for j in columns], kind="stable")]
        elif self.column_sort == "weight" and selected is not None:
            columns = columns[np.argsort(-matrix[selected[0], columns], kind="stable")]
        elif self.column_sort == "sparsity":
            columns = columns[sparsity_order(matrix[:, columns], 0)]
        if self.row_sort == "name":
            rows = rows[np.argsort([self.data.classes[i].lower() for i in rows], kind="stable")]
        elif self.row_sort == "weight" and selected is not None:
            rows = rows[np.argsort(-matrix[rows, selected[1]], kind="stable")]
        elif self.row_sort == "sparsity":
            rows = rows[sparsity_order(matrix[rows], 1)]
        self.view.set_orders(rows, columns)
        self.update_status()

    def update_status(self) -> None:
        view = self.view
        status = (f"[b]{self.matrix_name}[/b]  {len(view.row_order)} classes × {len(view.column_order)} concepts  "
                  f"sort concepts: {self.column_sort}, classes: {self.row_sort}"
                  + (f"  filter: '{self.filter_text}'" if self.filter_text else ""))
        self.query_one("#matrix-status", Static).update(status)

    def on_matrix_view_cursor_moved(self, message: MatrixView.CursorMoved) -> None:
        self.show_class(message.row, message.column)

    def top_concepts(self, class_index: int, count: int = 8):
        """(positive, negative) lists of (concept, weight) for a class, over all concepts."""
        row = self.data.matrices[self.matrix_name][class_index]
        order = np.argsort(-row)
        positive = [(self.data.concepts[j], float(row[j])) for j in order[:count] if row[j] > 0]
        negative = [(self.data.concepts[j], float(row[j])) for j in order[::-1][:count] if row[j] < 0]
        return positive, negative

    def show_class(self, class_index: int, concept_index: int) -> None:
        positive, negative = self.top_concepts(class_index)
        table = Table(title=f"{self.data.classes[class_index]}", title_justify="left", show_header=False,
                      box=None, expand=True)
        table.add_column("concept")
        table.add_column("weight", justify="right")
        table.add_row("[b green]top positive[/]", "")
        for name, value in positive:
            table.add_row(name, f"[green]{value:+.3f}[/]")
        table.add_row("", "")
        table.add_row("[b red]top negative[/]", "")
        for name, value in negative:
            table.add_row(name, f"[red]{value:+.3f}[/]")
        table.add_row("", "")
        value = self.data.matrices[self.matrix_name][class_index, concept_index]
        table.add_row(f"[b]cell[/] {self.data.concepts[concept_index]}", f"{value:+.4f}")
        self.query_one("#side-panel", Static).update(table)

    def action_sort_columns(self) -> None:
        self.column_sort = COLUMN_SORTS[(COLUMN_SORTS.index(self.column_sort) + 1) % len(COLUMN_SORTS)]
        self.apply()

    def action_sort_rows(self) -> None:
        self.row_sort = ROW_SORTS[(ROW_SORTS.index(self.row_sort) + 1) % len(ROW_SORTS)]
        self.apply()

    def action_toggle_matrix(self) -> None:
        self.matrix_name = self.matrix_names[(self.matrix_names.index(self.matrix_name) + 1) % len(self.matrix_names)]
        self.view.set_matrix(self.data.matrices[self.matrix_name])
        self.apply()

    def action_search(self) -> None:
        search = self.query_one("#search", Input)
        search.display = True
        search.value = self.filter_text
        search.focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.filter_text = event.value
        event.input.display = False
        self.apply()
        self.view.focus()

    def action_clear_search(self) -> None:
        self.filter_text = ""
        self.query_one("#search", Input).display = False
        self.apply()
        self.view.focus()
