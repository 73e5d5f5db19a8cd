"""Write the README's screenshots of `cbmctl inspect` (one SVG per screen) from a run directory.

    python docs/screenshots.py runs/quickstart-gumbel
"""
from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from cbmctl.tui.app import InspectApp
from cbmctl.tui.data import load

SCREENS = {"matrix": ["1", "down", "down", "s"], "images": ["2", "down", "down"], "summary": ["3"]}


async def shoot(run: Path, out: Path) -> None:
    for name, keys in SCREENS.items():
        app = InspectApp(load(run))
        async with app.run_test(size=(150, 40)) as pilot:
            await pilot.pause()
            await pilot.press(*keys)
            await pilot.pause()
            app.save_screenshot(f"inspect-{name}.svg", path=str(out))
        print(out / f"inspect-{name}.svg")


if __name__ == "__main__":
    asyncio.run(shoot(Path(sys.argv[1]), Path(__file__).parent))
