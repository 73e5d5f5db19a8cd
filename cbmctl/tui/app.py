"""The inspect app: a matrix, an images, a summary and a concept-units screen over one run directory or cache."""
from __future__ import annotations

from rich.console import Group
from rich.table import Table
from rich.text import Text
from textual.app import App
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

from cbmctl.sanitize import safe_text
from cbmctl.tui.concepts_screen import ConceptsScreen
from cbmctl.tui.images_screen import ImagesScreen
from cbmctl.tui.matrix_screen import MatrixScreen
from cbmctl.tui.summary_screen import SummaryScreen

# (section, [(keys, what they do)]): one short phrase per key, so that no line wraps at 80 columns
HELP = (
    ("everywhere", [
        ("1  m", "class × concept matrix"),
        ("2  i", "images of the split"),
        ("3", "summary: metrics, configuration, data"),
        ("4  u", "concept units: faithfulness, use, top images"),
        ("?", "this help"),
        ("q", "quit"),
    ]),
    ("matrix", [
        ("arrows", "move; PgUp/PgDn by 20 rows, Home/End"),
        ("s", "sort concepts: name, |weight| in class, most used"),
        ("r", "sort classes: name, |weight| of concept, most used"),
        ("t", "switch the head and head × CBL (on ψ)"),
        ("z", "hide / show concepts zero in every class shown"),
        ("/", "filter concepts and classes by text"),
        ("Esc", "clear the filter"),
    ]),
    ("images", [
        ("arrows", "select an image"),
        ("c", "show all, correct or incorrect images"),
        ("o", "open the image in the system viewer"),
    ]),
    ("concept units", [
        ("arrows", "select a unit (or, after Tab, a top image)"),
        ("s", "sort units: most used, least faithful, name"),
        ("Tab", "switch between the units and the top images"),
        ("o", "open the highlighted top image"),
    ]),
    ("mouse", [
        ("click", "select a cell, a class, a concept or an image"),
        ("wheel", "scroll"),
    ]),
)


def help_table() -> Group:
    parts = [Text("cbmctl inspect — keys", style="bold")]
    for section, keys in HELP:
        table = Table(show_header=False, box=None, padding=(0, 1), expand=False)
        table.add_column("keys", style="bold", no_wrap=True, width=8)
        table.add_column("action", no_wrap=True)
        for key, action in keys:
            table.add_row(key, action)
        parts += [Text(""), Text(section, style="bold underline"), table]
    return Group(*parts, Text(""), Text("any key closes this help", style="dim"))


class HelpScreen(ModalScreen):
    """The keys, in a box that scrolls when the terminal is short; any other key closes it."""
    SCROLL_KEYS = ("up", "down", "pageup", "pagedown", "home", "end")

    def compose(self):
        with VerticalScroll(id="help"):
            yield Static(help_table())

    def on_key(self, event) -> None:
        if event.key not in self.SCROLL_KEYS:
            event.stop()
            self.dismiss()


class InspectApp(App):
    CSS_PATH = "app.tcss"
    TITLE = "cbmctl inspect"
    # one footer entry for the four screens: the footer has room for each screen's own keys (? lists them all)
    BINDINGS = [Binding("1,m", "switch_mode('matrix')", "screens", key_display="1-4"),
                Binding("2,i", "switch_mode('images')", "images", show=False),
                Binding("3", "switch_mode('summary')", "summary", show=False),
                Binding("4,u", "switch_mode('concepts')", "units", show=False),
                Binding("question_mark", "help", "help"),
                Binding("q", "quit", "quit")]

    def __init__(self, data, **kwargs):
        super().__init__(**kwargs)
        self.data = data
        self.sub_title = safe_text(data.title)  # holds a directory name: untrusted

    def on_mount(self) -> None:
        self.add_mode("matrix", lambda: MatrixScreen(self.data))
        self.add_mode("images", lambda: ImagesScreen(self.data))
        self.add_mode("summary", lambda: SummaryScreen(self.data))
        self.add_mode("concepts", lambda: ConceptsScreen(self.data))
        self.switch_mode("matrix")

    def action_help(self) -> None:
        self.push_screen(HelpScreen())
