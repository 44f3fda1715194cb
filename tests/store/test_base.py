"""``roomcast.store.base``: the words search compares."""

from __future__ import annotations

import string

from hypothesis import given
from hypothesis import strategies as st

from roomcast.store.base import search_tokens


def test_search_tokens_lower_case_and_strip_accents() -> None:
    """Runs of letters and digits, lower case, without accents; the rest separates them."""
    assert search_tokens("Café au-lait! NAÏVE_x2") == ("cafe", "au", "lait", "naive", "x2")
    assert search_tokens("--- !!") == ()


@given(st.text(alphabet=string.printable))
def test_ascii_text_gives_the_tokens_of_the_general_path(text: str) -> None:
    """ASCII text takes a shortcut; it finds what the accent-stripping path finds (text
    followed by a non-ASCII word goes through that path)."""
    assert search_tokens(text + " é") == (*search_tokens(text), "e")
