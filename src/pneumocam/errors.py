"""The one exception type a user sees as a one-line message instead of a traceback.

Every module may raise a subclass; the CLI catches this base and prints `error: <message>`.
"""


class PneumocamError(Exception):
    """A problem with the user's input or environment; the message names the file/value and the fix."""
