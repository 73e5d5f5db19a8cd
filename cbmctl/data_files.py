"""Reading small text, YAML and JSON files that may come from anyone (concept sets, class lists, concept
maps, a dataset's cbmctl.yaml), with bounds: a size cap checked before reading, YAML through SafeLoader
without aliases (a 398-byte "billion laughs" file of nested anchors otherwise expands to gigabytes) and
without duplicate keys (YAML and JSON both keep the last one silently), and nesting too deep for the
parsers' recursion reported instead of raised. Every problem is a one-line CbmctlError naming the file."""
from __future__ import annotations

import functools
import json
from pathlib import Path

from cbmctl.errors import CbmctlError
from cbmctl.sanitize import safe_text

MAX_TEXT_BYTES = 16 * 1024 * 1024  # the largest built-in concept set is 40 KB
MAX_STRUCTURED_BYTES = 4 * 1024 * 1024  # measured here: 0.7 s per MB of YAML with libyaml, 3.4 s without


def read_bytes_capped(path: Path, max_bytes: int = MAX_TEXT_BYTES) -> bytes:
    """The bytes of a regular file of at most `max_bytes`, refused by its size before reading."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise CbmctlError(f"{safe_text(path)}: {size:,} bytes, over the {max_bytes:,}-byte limit for this "
                              "kind of file")
        with open(path, "rb") as handle:
            # read(n) allocates n bytes up front, so ask for the size the file has, not for the limit
            raw, more = handle.read(size), handle.read(1)
    except OSError as error:
        raise CbmctlError(f"{safe_text(path)}: cannot read ({error.strerror or error})") from None
    if more or len(raw) != size:
        raise CbmctlError(f"{safe_text(path)}: changed while being read (or is not a regular file)")
    return raw


def read_text_capped(path: Path, max_bytes: int = MAX_TEXT_BYTES) -> str:
    """A UTF-8 (optionally BOM-prefixed) text file of at most `max_bytes`."""
    raw = read_bytes_capped(path, max_bytes)
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise CbmctlError(f"{safe_text(path)}: not UTF-8 text (byte {error.start})") from None


@functools.lru_cache(maxsize=1)
def _yaml_loader():
    """(loader class, whether aliases must be looked for in a first pass). With libyaml the C parser is
    used, about five times faster (it also caps nesting at 1000 levels), and aliases are found by scanning
    its event stream, as its composer cannot be overridden; without it, SafeLoader refuses them itself."""
    import yaml
    fast = bool(getattr(yaml, "__with_libyaml__", False))

    class NoAliasSafeLoader(yaml.CSafeLoader if fast else yaml.SafeLoader):
        def compose_node(self, parent, index):  # used by the pure-Python loader only
            if self.check_event(yaml.events.AliasEvent):
                raise yaml.composer.ComposerError(None, None, "aliases (*name) are not allowed here",
                                                  self.peek_event().start_mark)
            return super().compose_node(parent, index)

        def construct_mapping(self, node, deep=False):
            mapping = super().construct_mapping(node, deep)
            if len(mapping) != len(node.value):
                keys = [self.construct_object(k, deep=True) for k, _ in node.value]
                at = next(i for i, k in enumerate(keys) if k in keys[:i])
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {keys[at]!r}",
                                                        node.value[at][0].start_mark)
            return mapping

    return NoAliasSafeLoader, fast


def load_yaml(path: Path, max_bytes: int = MAX_STRUCTURED_BYTES):
    """The data of a YAML file, parsed safely (see the module docstring)."""
    import yaml
    text = read_text_capped(path, max_bytes)
    loader, scan_for_aliases = _yaml_loader()
    try:
        if scan_for_aliases:
            for event in yaml.parse(text, Loader=loader):
                if isinstance(event, yaml.events.AliasEvent):
                    raise yaml.composer.ComposerError(None, None, "aliases (*name) are not allowed here",
                                                      event.start_mark)
        return yaml.load(text, Loader=loader)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise CbmctlError(f"{safe_text(path)}{where}: not valid YAML ({safe_text(problem)})") from None
    except RecursionError:
        raise CbmctlError(f"{safe_text(path)}: nested too deeply to read") from None


def _refuse_duplicates(pairs):
    keys = [key for key, _ in pairs]
    if len(set(keys)) != len(keys):
        duplicate = next(k for i, k in enumerate(keys) if k in keys[:i])
        raise ValueError(f"duplicate key {duplicate!r}")
    return dict(pairs)


def load_json(path: Path, max_bytes: int = MAX_STRUCTURED_BYTES):
    """The data of a JSON file, duplicate keys refused."""
    text = read_text_capped(path, max_bytes)
    try:
        return json.loads(text, object_pairs_hook=_refuse_duplicates)
    except ValueError as error:
        raise CbmctlError(f"{safe_text(path)}: not valid JSON ({safe_text(error)})") from None
    except RecursionError:
        raise CbmctlError(f"{safe_text(path)}: nested too deeply to read") from None


def load_structured(path: Path, max_bytes: int = MAX_STRUCTURED_BYTES):
    """JSON for *.json, YAML otherwise."""
    return (load_json if Path(path).suffix.lower() == ".json" else load_yaml)(path, max_bytes)
