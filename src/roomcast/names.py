"""Names that look alike: ``skeleton`` says when two names could pass for each other.

Names are ASCII (``model.user_name``: letters, digits, ``_``, ``.`` and ``-``), so Cyrillic
and zero-width look-alikes cannot be names at all. Inside that alphabet, what is left is
what Unicode's confusables data (UTS #39, ``confusables.txt``) says about ASCII itself,
case, and decoration:

- the rows of ``confusables.txt`` whose source is a name character: ``0`` -> ``O``, ``1``
  -> ``l``, ``I`` -> ``l``, ``m`` -> ``rn`` (its other ASCII rows, ``"`` `` ` `` ``|``, are
  not name characters);
- case: a name is the same name in any case (``model.fold``), so ``ALICE_`` must look like
  ``alice``. UTS #39's skeleton is case-sensitive, and its ``I`` -> ``l`` would keep
  ``ALICE`` (``ALlCE``) apart from ``alice``; so the rule is the equivalence that the rows
  above and case generate together: ``i``, ``I``, ``l``, ``L`` and ``1`` are one letter
  (shown ``l``), ``o``, ``O`` and ``0`` another (``o``), and ``m`` and ``M`` are ``rn``;
- decoration: ``_``, ``.`` and ``-`` are dropped wherever they are, so ``alice_``,
  ``_alice`` and ``a.lice`` are ``alice``, and ``john.doe`` is ``john_doe``.

Two names look alike when their skeletons are equal: ``aIice``, ``a1ice``, ``ALICE_`` and
``alice`` all give ``allce``. The rule is one ``str.translate`` over a 64-character alphabet
(docs/decisions.md says why a table, not a library). ``Lookalikes`` indexes the names
online by skeleton, so that a check is a dictionary lookup; the SQLite and PostgreSQL stores
index the accounts' skeletons in a column.
"""

from __future__ import annotations

import string
from typing import Final

from roomcast.errors import ClientError
from roomcast.model import fold

__all__ = [
    "CONFUSABLES",
    "DECORATIONS",
    "Lookalikes",
    "lookalike_online",
    "lookalike_registered",
    "lookalike_reserved",
    "skeleton",
]

# The rows of UTS #39 confusables.txt whose source is a name character (source -> target).
CONFUSABLES: Final = {
    "0": "O",  # 0030 ; 004F ; MA # ( 0 -> O ) DIGIT ZERO -> LATIN CAPITAL LETTER O
    "1": "l",  # 0031 ; 006C ; MA # ( 1 -> l ) DIGIT ONE -> LATIN SMALL LETTER L
    "I": "l",  # 0049 ; 006C ; MA # ( I -> l ) LATIN CAPITAL LETTER I -> LATIN SMALL LETTER L
    "m": "rn",  # 006D ; 0072 006E ; MA # ( m -> rn ) LATIN SMALL LETTER M -> R, N
}
DECORATIONS: Final = "_.-"  # characters a skeleton drops: they decorate, they do not name


# CONFUSABLES with case folded away: the table the skeleton applies to lower-case names.
# Every target maps to itself (o, l, r, n are no source), so a skeleton is its own skeleton.
_FOLDED: Final = {source.lower(): target.lower() for source, target in CONFUSABLES.items()}


def _map(char: str) -> str:
    """One name character's skeleton: nothing for a decoration; else its lower case, then
    the folded table (``I`` -> ``i`` -> ``l``, ``M`` -> ``m`` -> ``rn``)."""
    if char in DECORATIONS:
        return ""
    lower = char.lower()
    return _FOLDED.get(lower, lower)


_ALPHABET = string.ascii_letters + string.digits + DECORATIONS
_TABLE: Final = str.maketrans({c: _map(c) for c in _ALPHABET})


def skeleton(name: str) -> str:
    """The form under which ``name`` is compared with others for looking alike: ``aIice``,
    ``a1ice``, ``ALICE_`` and ``alice`` all give ``allce``. Meant for valid names; any
    other character passes through unchanged."""
    return name.translate(_TABLE)


def lookalike_online(name: str, other: str) -> ClientError:
    """The refusal of ``name``, which looks like ``other``, a name online."""
    return ClientError(
        "lookalike", f"{name!r} looks like {other!r}, who is online: choose another name"
    )


def lookalike_reserved(name: str, other: str) -> ClientError:
    """The refusal of ``name``, which looks like ``other``, a name being registered."""
    return ClientError(
        "lookalike",
        f"{name!r} looks like {other!r}, which is being registered: choose another name",
    )


def lookalike_registered(name: str, other: str) -> ClientError:
    """The refusal of ``name``, which looks like ``other``, a registered name."""
    return ClientError(
        "lookalike", f"{name!r} looks like the registered name {other!r}: choose another name"
    )


class Lookalikes:
    """The names online, by skeleton: which one a new name would look like.

    Several names may share a skeleton (accounts registered before the rule existed), so
    each skeleton holds a small dictionary of folded name -> name as shown.
    """

    __slots__ = ("_by_skeleton",)

    def __init__(self) -> None:
        self._by_skeleton: dict[str, dict[str, str]] = {}  # skeleton -> fold(name) -> name

    def add(self, name: str) -> None:
        """``name`` is online."""
        self._by_skeleton.setdefault(skeleton(name), {})[fold(name)] = name

    def discard(self, name: str) -> None:
        """``name`` is no longer online (fine if it was not)."""
        key = skeleton(name)
        names = self._by_skeleton.get(key)
        if names is not None:
            names.pop(fold(name), None)
            if not names:
                del self._by_skeleton[key]

    def like(self, name: str, *, besides: str | None = None) -> str | None:
        """A name online that looks like ``name``, other than ``besides`` (in any case: the
        asker's own name) and ``name`` itself; ``None`` if there is none."""
        names = self._by_skeleton.get(skeleton(name))
        if not names:
            return None
        mine = {fold(name), fold(besides)} if besides is not None else {fold(name)}
        for key, shown in names.items():
            if key not in mine:
                return shown
        return None

    def __len__(self) -> int:
        return sum(len(names) for names in self._by_skeleton.values())
