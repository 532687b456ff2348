"""`metaacdc curve` flags of its own: refused before a run folder or report is written."""

from __future__ import annotations

from tests.bad_inputs.table import Case


def _curve(*flags: str) -> list[str]:
    """`metaacdc curve` of one tiny run, into the workspace's curve/, with ``flags``."""
    grid = ["--shots", "1", "--backbones", "conv4", "--acdc", "none", "--image-size", "16"]
    return ["curve", *grid, "--meta-updates", "1", "--out", "curve", *flags]


CASES = [
    Case(
        "curve jobs zero",
        r"--jobs=0 is not valid; expected an integer >= 1 or auto",
        argv=lambda ws: _curve("--jobs", "0"),
    ),
    Case(
        "curve jobs negative",
        r"--jobs=-2 is not valid; expected an integer >= 1 or auto",
        argv=lambda ws: _curve("--jobs", "-2"),
    ),
    Case(
        "curve jobs not a number",
        r"--jobs='many' is not valid; expected an integer >= 1 or auto",
        argv=lambda ws: _curve("--jobs", "many"),
    ),
]
