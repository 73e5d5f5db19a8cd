"""Write the README's screenshots of `cbmctl inspect` (one SVG per screen) from a run directory.

    cbmctl quickstart && python docs/screenshots.py runs/quickstart-gumbel

matrix: the sparse head with its all-zero concepts hidden, the third class selected, concepts sorted by
its weights; images: the first misclassified test image, with the contributions to the predicted and to
the true class; summary: the tables at the top. 150 × 40 cells, as in a common terminal.
"""
from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from cbmctl.tui.app import InspectApp
from cbmctl.tui.data import load

SIZE = (150, 40)
SCREENS = {"matrix": ["1", "down", "down", "s"], "images": ["2", "c", "c"], "summary": ["3"]}


async def shoot(run: Path, out: Path) -> None:
    data = load(run)
    for name, keys in SCREENS.items():
        app = InspectApp(data)
        async with app.run_test(size=SIZE) as pilot:
            await pilot.pause()
            await pilot.press(*keys)
            await pilot.pause()
            app.save_screenshot(f"inspect-{name}.svg", path=str(out))
        print(out / f"inspect-{name}.svg")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    asyncio.run(shoot(Path(sys.argv[1]), Path(__file__).parent))
