"""User-facing errors."""


class SA3DError(Exception):
    """A problem with what the user gave us (a flag, a file, a prompt, weights).

    The message says what was wrong, what was given and how to fix it. Command-line entry points
    print it without a traceback and exit with status 2.
    """
