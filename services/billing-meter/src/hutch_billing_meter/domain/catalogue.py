"""The price books an installation offers: the presets and the operator's own."""

from __future__ import annotations

from collections.abc import Iterable

from hutch.core import errors
from hutch_billing_meter.domain.pricing import PriceBook


class PriceBooks:
    """Books by name. An operator's book replaces a preset of the same name."""

    def __init__(self, books: Iterable[PriceBook], default: str) -> None:
        self._books: dict[str, PriceBook] = {}
        for book in books:
            self._books[book.name] = book
        if default not in self._books:
            raise ValueError(f"the default price book {default!r} is not defined; books: {', '.join(self._books)}")
        self.default = default

    def get(self, name: str = "") -> PriceBook:
        """The book called `name`; the default one for an empty name."""
        book = self._books.get(name or self.default)
        if book is None:
            raise errors.InvalidArgument(f"no price book is called {name!r}; there are: {', '.join(self._books)}")
        return book

    def all(self) -> list[PriceBook]:
        return list(self._books.values())
