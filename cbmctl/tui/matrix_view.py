"""A class × concept heat map that renders only the visible cells, so 1000 × 5000 stays responsive."""
from __future__ import annotations

import numpy as np
from rich.color import Color
from rich.segment import Segment
from rich.style import Style
from textual.binding import Binding
from textual.geometry import Size
from textual.message import Message
from textual.reactive import reactive
from textual.scroll_view import ScrollView
from textual.strip import Strip

LABEL_WIDTH = 26
CORNER = "class \\ concept"
CELL_WIDTH = 8


def heat(value: float, scale: float) -> Style:
    """Green for positive, red for negative, stronger with magnitude."""
    strength = 0.0 if scale <= 0 else min(1.0, abs(value) / scale)
    base = (22, 24, 28)
    target = (30, 170, 70) if value >= 0 else (200, 45, 45)
    rgb = tuple(int(b + (t - b) * strength) for b, t in zip(base, target))
    return Style(bgcolor=Color.from_rgb(*rgb), color="white" if strength > 0.15 else "grey62")


class MatrixView(ScrollView, can_focus=True):
    """Rows are classes, columns concepts; the orders are index arrays into the underlying matrix."""

    BINDINGS = [
        Binding("up", "move(-1, 0)", "up", show=False), Binding("down", "move(1, 0)", "down", show=False),
        Binding("left", "move(0, -1)", "left", show=False), Binding("right", "move(0, 1)", "right", show=False),
        Binding("pageup", "move(-20, 0)", show=False), Binding("pagedown", "move(20, 0)", show=False),
        Binding("home", "jump(0)", show=False), Binding("end", "jump(1)", show=False),
    ]

    cursor = reactive((0, 0), always_update=True)

    class CursorMoved(Message):
        def __init__(self, row: int, column: int):
            super().__init__()
            self.row, self.column = row, column  # indices into the matrix (class, concept)

    def __init__(self, matrix: np.ndarray, rows: list[str], columns: list[str], **kwargs):
        super().__init__(**kwargs)
        self.rows, self.columns = rows, columns
        self.set_matrix(matrix)

    def set_matrix(self, matrix: np.ndarray) -> None:
        self.matrix = matrix
        self.scale = float(np.abs(matrix).max()) if matrix.size else 1.0
        self.row_order = np.arange(matrix.shape[0])
        self.column_order = np.arange(matrix.shape[1])
        self._resize()

    def set_orders(self, row_order: np.ndarray, column_order: np.ndarray) -> None:
        self.row_order, self.column_order = np.asarray(row_order), np.asarray(column_order)
        self._resize()
        row, column = self.cursor
        self.cursor = (min(row, max(len(self.row_order) - 1, 0)), min(column, max(len(self.column_order) - 1, 0)))

    def _resize(self) -> None:
        self.virtual_size = Size(LABEL_WIDTH + len(self.column_order) * CELL_WIDTH, len(self.row_order) + 1)
        self.refresh()

    @property
    def selected(self) -> tuple[int, int] | None:
        row, column = self.cursor
        if not len(self.row_order) or not len(self.column_order):
            return None
        return int(self.row_order[row]), int(self.column_order[column])

    def watch_cursor(self, cursor) -> None:
        selected = self.selected
        if selected is not None:
            self.post_message(self.CursorMoved(*selected))
        self._scroll_to_cursor()
        self.refresh()

    def _scroll_to_cursor(self) -> None:
        row, column = self.cursor
        x, y = self.scroll_offset
        visible_columns = max(1, (self.size.width - LABEL_WIDTH) // CELL_WIDTH)
        visible_rows = max(1, self.size.height - 1)
        first_column = x // CELL_WIDTH
        if column < first_column:
            x = column * CELL_WIDTH
        elif column >= first_column + visible_columns:
            x = (column - visible_columns + 1) * CELL_WIDTH
        if row < y:
            y = row
        elif row >= y + visible_rows:
            y = row - visible_rows + 1
        self.scroll_to(x, y, animate=False)

    def action_move(self, rows: int, columns: int) -> None:
        row, column = self.cursor
        self.cursor = (max(0, min(len(self.row_order) - 1, row + rows)),
                       max(0, min(len(self.column_order) - 1, column + columns)))

    def action_jump(self, end: int) -> None:
        self.cursor = (self.cursor[0], len(self.column_order) - 1 if end else 0)

    def on_click(self, event) -> None:
        """Select the clicked cell (a click on the header row selects its column)."""
        x, y = self.scroll_offset
        column = (x // CELL_WIDTH) + (event.x - LABEL_WIDTH) // CELL_WIDTH if event.x >= LABEL_WIDTH else self.cursor[1]
        row = y + event.y - 1 if event.y >= 1 else self.cursor[0]
        if 0 <= row < len(self.row_order) and 0 <= column < len(self.column_order):
            self.cursor = (row, column)

    def render_line(self, y: int) -> Strip:
        width = self.size.width
        scroll_x, scroll_y = self.scroll_offset
        first = scroll_x // CELL_WIDTH
        count = max(0, (width - LABEL_WIDTH) // CELL_WIDTH + 1)
        columns = self.column_order[first:first + count]
        cursor_row, cursor_column = self.cursor
        header = Style(bold=True, color="bright_white", bgcolor="grey15")
        if y == 0:
            segments = [Segment(CORNER.ljust(LABEL_WIDTH)[:LABEL_WIDTH], header)]
            for offset, j in enumerate(columns):
                style = header + Style(reverse=True) if first + offset == cursor_column else header
                segments.append(Segment(f"{self.columns[j][:CELL_WIDTH - 1]:<{CELL_WIDTH}}", style))
            return Strip(segments).crop(0, width)
        row = scroll_y + y - 1
        if row >= len(self.row_order):
            return Strip.blank(width)
        i = int(self.row_order[row])
        label_style = Style(bold=True, reverse=row == cursor_row)
        segments = [Segment(f"{self.rows[i][:LABEL_WIDTH - 1]:<{LABEL_WIDTH}}", label_style)]
        values = self.matrix[i, columns]
        for offset, value in enumerate(values):
            style = heat(float(value), self.scale)
            if row == cursor_row and first + offset == cursor_column:
                style = style + Style(reverse=True, bold=True)
            segments.append(Segment(f"{value:+{CELL_WIDTH - 1}.2f} "[:CELL_WIDTH], style))
        return Strip(segments).crop(0, width)
