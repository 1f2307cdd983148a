"""Decoding a command's output as it streams in, and the handlers that receive the text."""

from __future__ import annotations

import codecs
import inspect
from collections.abc import Callable
from typing import TypeAlias

OutputHandler: TypeAlias = Callable[[str], object]
"""Receives output as it arrives, decoded as UTF-8. With AsyncSandbox it may be a coroutine function."""


async def call_handler(handler: Callable[[str], object] | None, text: str) -> None:
    """Calls a handler that may be a plain function or a coroutine function."""
    if handler is not None:
        result = handler(text)
        if inspect.isawaitable(result):
            await result


class TextCollector:
    """Decodes one output stream incrementally, keeping the text and passing it to a handler."""

    def __init__(self, handler: OutputHandler | None) -> None:
        self._handler = handler
        # Incremental, so a multi-byte character split across chunks decodes intact.
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._parts: list[str] = []
        self._finished = False

    @property
    def text(self) -> str:
        """Everything decoded so far."""
        return "".join(self._parts)

    async def feed(self, data: bytes) -> str:
        """Decodes a chunk; returns the text it completed (possibly empty)."""
        return await self._emit(self._decoder.decode(data))

    async def finish(self) -> str:
        """Decodes what an incomplete character left at the end (once); returns that text."""
        if self._finished:
            return ""
        self._finished = True
        return await self._emit(self._decoder.decode(b"", final=True))

    async def _emit(self, text: str) -> str:
        if text:
            self._parts.append(text)
            await call_handler(self._handler, text)
        return text
