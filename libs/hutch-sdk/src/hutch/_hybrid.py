"""Methods that work on an instance and on the class: `sandbox.kill()` and `Sandbox.kill("sb-1")`."""

from __future__ import annotations

import types
from collections.abc import Callable
from typing import Any, Concatenate, Generic, ParamSpec, TypeVar, overload

_Owner = TypeVar("_Owner")
_P = ParamSpec("_P")
_R = TypeVar("_R")
_ClassP = ParamSpec("_ClassP")
_ClassR = TypeVar("_ClassR")


class HybridMethod(Generic[_Owner, _P, _R, _ClassP, _ClassR]):
    """A method with one behaviour on an instance and another on the class.

    On an instance it is `on_instance` bound to that instance; on the class it is `on_class`, which
    takes what identifies an instance (e.g. a sandbox id) as its first argument. Type checkers see
    each signature where it applies.

    Args:
        on_instance: The method, taking the instance first.
        on_class: The class-level function.
    """

    def __init__(
        self,
        on_instance: Callable[Concatenate[_Owner, _P], _R],
        on_class: Callable[_ClassP, _ClassR],
    ) -> None:
        self._on_instance = on_instance
        self._on_class = on_class
        self.__doc__ = on_instance.__doc__

    @overload
    def __get__(self, instance: None, owner: type[Any] | None = None) -> Callable[_ClassP, _ClassR]: ...
    @overload
    def __get__(self, instance: _Owner, owner: type[Any] | None = None) -> Callable[_P, _R]: ...
    def __get__(
        self, instance: _Owner | None, owner: type[Any] | None = None
    ) -> Callable[_ClassP, _ClassR] | Callable[_P, _R]:
        if instance is None:
            return self._on_class
        return types.MethodType(self._on_instance, instance)
