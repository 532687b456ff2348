"""learn2learn, imported without gym's banner.

learn2learn imports gym, which prints a multi-line deprecation notice to stderr on import
(nothing of gym is used here). That notice is dropped; anything else printed while
importing is passed on.
"""

from __future__ import annotations

import contextlib
import io
import sys

_captured = io.StringIO()
with contextlib.redirect_stderr(_captured):
    import learn2learn
if "Gym has been unmaintained" not in _captured.getvalue():
    sys.stderr.write(_captured.getvalue())

__all__ = ["learn2learn"]
