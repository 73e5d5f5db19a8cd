"""The one exception type that the CLI turns into a one-line message and a non-zero exit."""


class CbmctlError(Exception):
    """A problem the user can fix; its message is a single line that says how."""

    exit_code = 1
