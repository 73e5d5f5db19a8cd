"""A class × concept heat map that renders only the visible cells, so 1000 × 5000 stays responsive.

Widths follow the terminal: the class-name column takes the longest visible name when it fits in a
third of the view (20 cells in a narrow one); a cell is wide enough for the longest word of the visible
concept names (8 to 12 cells, wider when every column fits anyway); concept names are wrapped over up to
three header lines. A name is cut (with an ellipsis) only where it does not fit; the side panel shows
it whole."""
from __future__ import annotations

import math

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

from cbmctl.sanitize import safe_text
from cbmctl.tui.text import fit, longest, wrap_words

CORNER = "class \\ concept"
LABEL_MIN, LABEL_WIDE = 12, 20   # a class name's column: at least, and what a narrow view still gives
CELL_MIN, CELL_MAX, CELL_ROOMY = 8, 12, 24   # a cell's width: the usual range, and when all columns fit
HEADER_LINES = 3
NARROW_COLUMNS = 5   # a narrow view narrows cells (down to CELL_MIN) to show at least this many
ZERO = "·"   # an exactly zero weight (a sparse head's unused concept), told apart from a small one


def heat(value: float, scale: float) -> Style:
    """Green for positive, red for negative, stronger with magnitude."""
    strength = 0.0 if scale <= 0 else min(1.0, abs(value) / scale)
    base = (22, 24, 28)
    target = (30, 170, 70) if value >= 0 else (200, 45, 45)
    rgb = tuple(int(b + (t - b) * strength) for b, t in zip(base, target))
    return Style(bgcolor=Color.from_rgb(*rgb), color="white" if strength > 0.15 else "grey62")


def decimals(scale: float, width: int) -> int:
    """Decimals that give the largest value about three significant digits, within `width` characters."""
    digits = 2 if scale <= 0 or not math.isfinite(scale) else max(0, min(4, 2 - math.floor(math.log10(scale))))
    while digits and len(f"{-scale:+.{digits}f}") > width:
        digits -= 1
    return digits


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
        # names are untrusted and go out as raw segments: control characters escaped once, here
        self.rows, self.columns = [safe_text(r) for r in rows], [safe_text(c) for c in columns]
        self.label_width, self.cell_width, self.header_height = LABEL_MIN, CELL_MIN, 1
        self._headers: dict[int, list[str]] = {}
        self.set_matrix(matrix)

    def set_matrix(self, matrix: np.ndarray) -> None:
        self.matrix = matrix
        self.scale = float(np.abs(matrix).max()) if matrix.size else 1.0
        self.row_order = np.arange(matrix.shape[0])
        self.column_order = np.arange(matrix.shape[1])
        self._resize()

    def set_orders(self, row_order: np.ndarray, column_order: np.ndarray) -> None:
        self.row_order, self.column_order = np.asarray(row_order, int), np.asarray(column_order, int)
        self._resize()
        row, column = self.cursor
        self.cursor = (min(row, max(len(self.row_order) - 1, 0)), min(column, max(len(self.column_order) - 1, 0)))

    def on_resize(self) -> None:
        self._resize()
        self._scroll_to_cursor()

    def _fit_widths(self) -> None:
        """Label and cell widths and header height for the view's width and the rows and columns shown."""
        width = self.size.width or 120  # before the first layout
        names = [self.rows[i] for i in self.row_order]
        cap = min(max(LABEL_WIDE, width // 3), width // 2)
        self.label_width = max(LABEL_MIN, min(longest(names + [CORNER]) + 1, cap))
        concepts = [self.columns[j] for j in self.column_order]
        word = longest(w for name in concepts for w in name.split())
        cell = max(CELL_MIN, min(CELL_MAX, word + 1))
        cell = min(cell, max(CELL_MIN, (width - self.label_width) // NARROW_COLUMNS))  # keep some columns in view
        room = (width - self.label_width) // max(1, len(concepts))
        if room > cell:  # every column fits: use the room so that names need fewer lines
            cell = min(room, CELL_ROOMY, max(cell, longest(concepts) + 1))
        self.cell_width = cell
        self._headers = {}
        self.header_height = max((len(self._header(j)) for j in self.column_order), default=1)

    def _header(self, column: int) -> list[str]:
        if column not in self._headers:
            self._headers[column] = wrap_words(self.columns[column], self.cell_width - 1, HEADER_LINES)
        return self._headers[column]

    def _resize(self) -> None:
        self._fit_widths()
        self.virtual_size = Size(self.label_width + len(self.column_order) * self.cell_width,
                                 len(self.row_order) + self.header_height)
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
        visible_columns = max(1, (self.size.width - self.label_width) // self.cell_width)
        visible_rows = max(1, self.size.height - self.header_height)
        first_column = x // self.cell_width
        if column < first_column:
            x = column * self.cell_width
        elif column >= first_column + visible_columns:
            x = (column - visible_columns + 1) * self.cell_width
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
        """Select the clicked cell (a click on the header selects its column, on a name its row)."""
        x, y = self.scroll_offset
        column = (x // self.cell_width + (event.x - self.label_width) // self.cell_width
                  if event.x >= self.label_width else self.cursor[1])
        row = y + event.y - self.header_height if event.y >= self.header_height else self.cursor[0]
        if 0 <= row < len(self.row_order) and 0 <= column < len(self.column_order):
            self.cursor = (row, column)

    def visible_columns(self) -> np.ndarray:
        """The matrix columns on screen now, left to right."""
        first = self.scroll_offset.x // self.cell_width
        count = max(0, (self.size.width - self.label_width) // self.cell_width + 1)
        return self.column_order[first:first + count]

    def render_line(self, y: int) -> Strip:
        width, cell = self.size.width, self.cell_width
        first = self.scroll_offset.x // cell
        columns = self.visible_columns()
        cursor_row, cursor_column = self.cursor
        if y < self.header_height:
            header = Style(bold=True, color="bright_white", bgcolor="grey15")
            corner = CORNER if y == self.header_height - 1 else ""
            segments = [Segment(fit(corner, self.label_width), header)]
            for offset, j in enumerate(columns):
                lines = self._header(int(j))
                line = lines[y - (self.header_height - len(lines))] if y >= self.header_height - len(lines) else ""
                style = header + Style(reverse=True) if first + offset == cursor_column else header
                segments.append(Segment(fit(line, cell - 1) + " ", style))
            return Strip(segments).crop(0, width)
        row = self.scroll_offset.y + y - self.header_height
        if row >= len(self.row_order):
            return Strip.blank(width)
        i = int(self.row_order[row])
        label_style = Style(bold=True, reverse=row == cursor_row)
        segments = [Segment(fit(self.rows[i], self.label_width - 1) + " ", label_style)]
        digits = decimals(self.scale, cell - 1)
        for offset, value in enumerate(self.matrix[i, columns]):
            style = heat(float(value), self.scale)
            if row == cursor_row and first + offset == cursor_column:
                style = style + Style(reverse=True, bold=True)
            text = ZERO if value == 0 else f"{value:+.{digits}f}"
            segments.append(Segment(f"{text:>{cell - 1}} ", style))
        return Strip(segments).crop(0, width)
