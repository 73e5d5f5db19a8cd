"""The one exception type that an entry point turns into a one-line message and a non-zero exit.

Library messages speak the library's language: a parameter is named as the keyword argument (or config-file
key) it is, between backquotes (`min_epochs`), and what to do is said in words. An entry point that calls the
parameters something else rewrites them: the command line shows `min_epochs` as --min-epochs
(cbmctl.cli.common.for_the_command_line)."""
from __future__ import annotations

import re

_PARAMETER = re.compile(r"`([a-z][a-z0-9_]*)`")


class CbmctlError(Exception):
    """A problem the user can fix; its message is a single line that says how.

    `options`: the parameters of the call the message names (each written `name` in it); by default every
    backquoted name in the message. Pass () when the names are a file's keys, which stay as the file has them."""

    exit_code = 1

    def __init__(self, message: str = "", *, options: tuple[str, ...] | None = None):
        super().__init__(message)
        self.options = tuple(_PARAMETER.findall(message)) if options is None else tuple(options)
