"""Reading the files a command is given or finds (concept sets, class lists, concept maps, configs, a dataset's
cbmctl.yaml and index files, a run's JSON, a world's world.json), any of which may come from anyone, with
bounds: only regular files are read (a FIFO would block forever, a device never end, a directory is not a
file), opened without blocking and checked through their descriptor; a size cap is applied to the bytes
actually read, not to what `stat` says (a /proc file says 0); YAML goes through SafeLoader without aliases
(a 398-byte "billion laughs" file of nested anchors otherwise expands to gigabytes) and without duplicate
keys (YAML and JSON both keep the last one silently), and nesting too deep for the parsers' recursion is
reported instead of raised. Every problem is a one-line CbmctlError naming the file."""
from __future__ import annotations

import functools
import json
import os
import stat
from pathlib import Path

from cbmctl.errors import CbmctlError
from cbmctl.sanitize import safe_text

MAX_TEXT_BYTES = 16 * 1024 * 1024  # the largest built-in concept set is 40 KB
MAX_STRUCTURED_BYTES = 4 * 1024 * 1024  # measured here: 0.7 s per MB of YAML with libyaml, 3.4 s without
_READ_BLOCK = 1 << 20

_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a named pipe"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


class NotRegularFile(OSError):
    """The path names a directory, a pipe, a socket or a device; the message says which."""


def special_kind(path) -> str | None:
    """What `path` is when it exists as neither a regular file nor a symbolic link ("a named pipe", "a
    character device", ...), else None: the things a writer must never replace."""
    try:
        mode = os.lstat(path).st_mode
    except OSError:
        return None
    if stat.S_ISREG(mode) or stat.S_ISLNK(mode):
        return None
    return _kind(mode)


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "a special file")


def open_regular(path) -> int:
    """A read-only descriptor of `path`, which must be a regular file: opened non-blocking (opening a named
    pipe would otherwise wait for a writer) and checked through the descriptor itself, so that no window
    remains in which the file could be swapped for a pipe. Raises OSError (NotRegularFile for the others)."""
    descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    try:
        mode = os.fstat(descriptor).st_mode
        if not stat.S_ISREG(mode):
            raise NotRegularFile(f"is {_kind(mode)}, not a regular file")
    except BaseException:
        os.close(descriptor)
        raise
    return descriptor


def require_regular(path) -> None:
    """A one-line CbmctlError when `path` exists but is not a regular file, for readers that open files
    themselves (h5py, safetensors: a named pipe would block them); a missing file is left to the caller."""
    try:
        os.close(open_regular(path))
    except NotRegularFile as error:
        raise CbmctlError(f"{safe_text(path)} {error}") from None
    except OSError:
        pass


def read_bytes_capped(path: Path, max_bytes: int = MAX_TEXT_BYTES) -> bytes:
    """The bytes of a regular file, refused in one line when it is anything else or holds more than
    `max_bytes` (counted while reading: stat's size is only the first, cheap check)."""
    path = Path(path)
    try:
        descriptor = open_regular(path)
    except NotRegularFile as error:
        raise CbmctlError(f"{safe_text(path)} {error}") from None
    except OSError as error:
        raise CbmctlError(f"{safe_text(path)}: cannot read ({error.strerror or error})") from None
    with os.fdopen(descriptor, "rb") as handle:
        try:
            size = os.fstat(descriptor).st_size
            if size > max_bytes:
                raise CbmctlError(f"{safe_text(path)}: {size:,} bytes, over the {max_bytes:,}-byte limit for "
                                  "this kind of file")
            # read(n) allocates n bytes up front: ask for the size the file claims, then in blocks
            chunks = [handle.read(size)] if size else []
            total = sum(map(len, chunks))
            while total <= max_bytes:
                block = handle.read(min(_READ_BLOCK, max_bytes + 1 - total))
                if not block:
                    break
                chunks.append(block)
                total += len(block)
        except OSError as error:
            raise CbmctlError(f"{safe_text(path)}: cannot read ({error.strerror or error})") from None
    if total > max_bytes:
        raise CbmctlError(f"{safe_text(path)}: more than {max_bytes:,} bytes, over the limit for this kind of file")
    return b"".join(chunks)


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
