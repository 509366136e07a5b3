"""Why a module or a file was left out of an archive.

A ``LeftOut`` is the str a user reads (``dump()``'s and ``create``'s
reports give it as it always was) carrying a ``kind`` that code groups and
decides by: rewording the text changes neither.
"""


class LeftOut(str):
    """``str`` for people, ``kind`` (a short fixed name) for code."""

    def __new__(cls, kind, text):
        self = super().__new__(cls, text)
        self.kind = kind
        return self


def from_exception(e):
    """The reason an exception gives: kind is its type's name (an
    ArchiveError's own kind for one an archive refused)."""
    kind = getattr(e, "kind", None) or type(e).__name__
    return LeftOut(kind, "%s: %s" % (type(e).__name__, e))
