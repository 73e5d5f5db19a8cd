"""The inspect app: a matrix, an images and a summary screen over one run directory or cache."""
from __future__ import annotations

from textual.app import App
from textual.binding import Binding
from textual.screen import ModalScreen
from textual.widgets import Static

from cbmctl.tui.images_screen import ImagesScreen
from cbmctl.tui.matrix_screen import MatrixScreen
from cbmctl.tui.summary_screen import SummaryScreen

HELP = """[b]cbmctl inspect[/b]

[b]1[/] / [b]m[/]  class × concept matrix     [b]2[/] / [b]i[/]  images     [b]3[/]  summary
[b]?[/]  this help     [b]q[/]  quit

[b]Matrix[/]: arrows move, [b]s[/] sorts concepts (name / weight in the selected class / most used),
[b]r[/] sorts classes (name / weight of the selected concept / most used), [b]t[/] switches
head × CBL and the head alone, [b]/[/] filters concepts and classes by text, Esc clears.
[b]Images[/]: arrows select, [b]c[/] cycles all / correct / incorrect, [b]o[/] opens the image.
The mouse works everywhere (click rows, scroll).

Press any key to close."""


class HelpScreen(ModalScreen):
    BINDINGS = [Binding("escape,question_mark,q,enter,space", "dismiss", "close")]

    def compose(self):
        yield Static(HELP, id="help")

    def on_key(self, event) -> None:
        self.dismiss()


class InspectApp(App):
    CSS_PATH = "app.tcss"
    TITLE = "cbmctl inspect"
    BINDINGS = [
        Binding("1,m", "switch_mode('matrix')", "matrix"),
        Binding("2,i", "switch_mode('images')", "images"),
        Binding("3", "switch_mode('summary')", "summary"),
        Binding("question_mark", "help", "help"),
        Binding("q", "quit", "quit"),
    ]

    def __init__(self, data, **kwargs):
        super().__init__(**kwargs)
        self.data = data
        self.sub_title = data.title

    def on_mount(self) -> None:
        self.add_mode("matrix", lambda: MatrixScreen(self.data))
        self.add_mode("images", lambda: ImagesScreen(self.data))
        self.add_mode("summary", lambda: SummaryScreen(self.data))
        self.switch_mode("matrix")

    def action_help(self) -> None:
        self.push_screen(HelpScreen())
