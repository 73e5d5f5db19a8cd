"""The repository's pages point at files it has: a link or an image that resolves to nothing is a broken
page on GitHub and on PyPI."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def _relative_targets(page: Path):
    for target in LINK.findall(page.read_text(encoding="utf-8")):
        if not re.match(r"[a-z]+:", target) and not target.startswith("#"):
            yield target.split("#")[0]


def test_every_relative_link_and_image_of_the_pages_exists():
    pages = [ROOT / "README.md", *sorted(ROOT.glob("*.md")), *sorted((ROOT / "docs").glob("*.md"))]
    missing = [f"{page.name}: {target}" for page in dict.fromkeys(pages)
               for target in _relative_targets(page) if not (page.parent / target).exists()]
    assert missing == []
    assert any("docs/bench-forest.png" in t for t in _relative_targets(ROOT / "README.md"))  # the check saw images


def test_every_docs_page_the_code_cites_exists():
    cited = {match for path in (ROOT / "cbmctl").rglob("*.py")
             for match in re.findall(r"docs/[\w.-]+\.md", path.read_text(encoding="utf-8"))}
    assert cited and all((ROOT / page).is_file() for page in cited), cited


def test_every_option_of_every_command_says_what_it_does():
    import click

    from cbmctl.cli.common import every_command
    commands = dict(every_command())
    assert {"train", "demo bench", "concepts filter"} <= set(commands)  # groups walked into
    silent = [f"{path} {option.opts[0]}" for path, command in commands.items()
              for option in command.params if isinstance(option, click.Option) and not option.help]
    assert silent == []
