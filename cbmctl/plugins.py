"""Plug-ins: a package adds models or ground truth to cbmctl by naming a function under one of cbmctl's
entry-point groups in its pyproject.toml, e.g.

    [project.entry-points."cbmctl.backbones"]
    acme = "acme_clip.cbmctl:register"

A registry loads its group the first time it is asked for a name it does not know, so that a command
which never meets a plug-in's name imports no plug-in; each function is called once per process and
registers what it brings. cbmctl's own demo CLIP and the demo world's ground truth come in this way
(cbmctl.demo declares them in cbmctl's pyproject.toml), which is why no generic module imports the demo."""
from __future__ import annotations

from cbmctl.errors import CbmctlError
from cbmctl.sanitize import safe_text

BACKBONES = "cbmctl.backbones"  # functions that call cbmctl.backbones.register_backbone
GROUND_TRUTH = "cbmctl.ground_truth"  # functions that call cbmctl.concept_truth.register_vocabulary

_loaded: set[str] = set()
_failed: dict[str, list[str]] = {}


def load_group(group: str) -> None:
    """Call every function of an entry-point group, once per process. A plug-in that fails to load does not
    take the others down; `failures(group)` says what went wrong where a name it would have brought is missed."""
    if group in _loaded:
        return
    _loaded.add(group)
    from importlib.metadata import entry_points
    for point in entry_points(group=group):
        try:
            point.load()()
        except Exception as error:  # any failure of foreign code: told, in one line, where it matters
            reason = str(error).splitlines()[0] if str(error) else type(error).__name__
            _failed.setdefault(group, []).append(f"{point.name} = {point.value}: {reason}")


def failed_to_load(group: str) -> str:
    """'' or one sentence naming the plug-ins of a group that failed to load, and why."""
    failed = _failed.get(group, [])
    return f"plug-ins that failed to load: {safe_text('; '.join(failed))[:300]}" if failed else ""


def failures(group: str) -> str:
    """'' or failed_to_load's sentence as a clause to end an error message with."""
    sentence = failed_to_load(group)
    return f" ({sentence})" if sentence else ""


def call_plugin(plugin: str, function, *args):
    """`function(*args)` of a registered plug-in (a provider's locate or knows, a vocabulary's claims or ways):
    any failure of its code becomes one line that names the plug-in, never a traceback."""
    try:
        return function(*args)
    except CbmctlError:
        raise
    except Exception as error:  # foreign code: whatever it raises
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise CbmctlError(f"the plug-in {safe_text(repr(plugin))[:200]} failed: {safe_text(reason)[:300]}") from None
