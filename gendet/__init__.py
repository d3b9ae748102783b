"""gendet: detect AI-generated images with GenDet.

The library is pure torch + pyarrow + fsspec + webdataset and never imports Ray;
``pipelines/`` wires it into Ray Data and Ray Train.
"""

__version__ = "0.8.0"


class GendetError(Exception):
    """A user-facing failure: the message is one line naming the input and the fix.

    The CLI prints it as ``gendet: error: <message>`` and exits 2, without a traceback.
    """


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first line of an exception's message (its type name when empty), for one-line errors."""
    lines = str(exc).strip().splitlines()
    return (lines[0] if lines else type(exc).__name__)[:limit]
