"""Images screen: the split's images with true and predicted class; the selected image's sparse
activations and their contributions to the predicted and to the true class, beside the raw CLIP scores."""
from __future__ import annotations

import shutil
import subprocess
import sys

from rich.table import Table
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Static

FILTERS = ("all", "correct", "incorrect")


def viewer_command() -> list[str] | None:
    if sys.platform == "darwin":
        return ["open"]
    if sys.platform.startswith("win"):
        return ["cmd", "/c", "start", ""]
    for program in ("xdg-open", "gio"):
        path = shutil.which(program)
        if path:
            return [path, "open"] if program == "gio" else [path]
    return None


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
        self.shown: list[dict] = []  # the activation rows displayed for the selected image
        self.selected: int | None = None

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal():
            yield DataTable(id="images", cursor_type="row", zebra_stripes=True)
            yield Static(id="image-detail")
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        table.add_columns("#", "ok", "conf", "true", "predicted", "image")
        if self.data.labels is None:
            self.query_one("#image-detail", Static).update(self.data.summary.get("note", "no images to show"))
            return
        self.fill()
        table.focus()

    def fill(self) -> None:
        table = self.query_one(DataTable)
        table.clear()
        data = self.data
        correct = data.predicted == data.labels
        keep = {"all": lambda i: True, "correct": lambda i: correct[i], "incorrect": lambda i: not correct[i]}[self.filter]
        self.rows = [i for i in range(len(data.labels)) if keep(i)]
        for i in self.rows:
            table.add_row(str(i), "✓" if correct[i] else "✗", f"{data.confidence[i]:.2f}",
                          data.classes[data.labels[i]][:20], data.classes[data.predicted[i]][:20],
                          data.paths[i].rsplit("/", 1)[-1][:28], key=str(i))
        self.sub_title = (f"{data.split} split: {len(self.rows)} of {len(data.labels)} images ({self.filter}); "
                          f"accuracy {correct.mean():.3f}")
        if self.rows:
            self.show(self.rows[0])
        else:
            self.query_one("#image-detail", Static).update(f"no {self.filter} images")

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        if event.row_key is not None and event.row_key.value is not None:
            self.show(int(event.row_key.value))

    def show(self, image: int) -> None:
        data = self.data
        self.selected = image
        predicted, true = int(data.predicted[image]), int(data.labels[image])
        to_predicted = data.contributions(image, predicted)
        to_true = data.contributions(image, true)
        self.shown = [{"concept": data.concepts[j], "activation": float(data.activations[image, j]),
                       "to_predicted": float(to_predicted[j]), "to_true": float(to_true[j]),
                       "score": float(data.scores[image, j])} for j in data.active_concepts(image, (predicted, true))]
        label = "activation" if data.mode == "run" else "V (cos)"
        table = Table(title=f"{data.paths[image]}\ntrue [b]{data.classes[true]}[/]  predicted "
                            f"[b]{data.classes[predicted]}[/] ({data.confidence[image]:.2f})",
                      title_justify="left", expand=True)
        table.add_column("concept")
        table.add_column(label, justify="right")
        table.add_column(f"→ {data.classes[predicted][:14]}", justify="right")
        table.add_column(f"→ {data.classes[true][:14]} (true)", justify="right")
        table.add_column("CLIP ψ", justify="right")
        for row in self.shown[:60]:
            table.add_row(row["concept"], f"{row['activation']:.3f}", _signed(row["to_predicted"]),
                          _signed(row["to_true"]), f"{row['score']:.2f}")
        if len(self.shown) > 60:
            table.add_row(f"… {len(self.shown) - 60} more active concepts", "", "", "", "")
        self.query_one("#image-detail", Static).update(table)

    def action_cycle_filter(self) -> None:
        self.filter = FILTERS[(FILTERS.index(self.filter) + 1) % len(FILTERS)]
        self.fill()

    def action_open_image(self) -> None:
        if self.selected is None:
            return
        path = self.data.image_path(self.selected)
        if path is None or not path.is_file():
            self.notify("this image is not a file on disk (e.g. a CIFAR batch row)", severity="warning")
            return
        command = viewer_command()
        if command is None:
            self.notify(f"no system image viewer found; the file is {path}", severity="warning", timeout=8)
            return
        try:
            subprocess.Popen(command + [str(path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        except OSError as error:
            self.notify(f"could not open the viewer ({error}); the file is {path}", severity="warning")
            return
        self.notify(f"opened {path.name}")


def _signed(value: float) -> str:
    colour = "green" if value > 0 else "red" if value < 0 else "grey50"
    return f"[{colour}]{value:+.3f}[/]"
