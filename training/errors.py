"""The one exception type for a run that cannot start as configured.

A :class:`SetupError` names the setting or file the user must change and how; ``training.run``
(and the other entry points) print its message as one line and exit with status 2, instead of a
traceback. Anything else that goes wrong is a bug, and keeps its traceback.
"""
from __future__ import annotations


class SetupError(ValueError):
    """A setting or an input that stops a run before it starts; the message says what to change."""
