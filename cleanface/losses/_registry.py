"""The margin-head registry: heads register by name, one factory builds them."""

from __future__ import annotations

import inspect
from typing import Any, Callable, TypeVar

from cleanface.errors import ConfigError
from cleanface.losses._base import MarginHead

_HEADS: dict[str, type[MarginHead]] = {}

H = TypeVar("H", bound=type[MarginHead])


def register_head(name: str) -> Callable[[H], H]:
    """Class decorator: register a :class:`MarginHead` subclass under ``name``."""

    def wrap(cls: H) -> H:
        if name in _HEADS:
            raise ValueError(f"head {name!r} is registered twice")
        _HEADS[name] = cls
        cls.head_name = name
        return cls

    return wrap


def list_heads() -> list[str]:
    """Names of all registered heads, sorted."""
    return sorted(_HEADS)


def head_class(name: str) -> type[MarginHead]:
    """The class registered as ``name``; unknown names fail with the list of valid ones."""
    cls = _HEADS.get(name)
    if cls is None:
        raise ConfigError(f"unknown head {name!r}; choose one of: {', '.join(list_heads())}")
    return cls


def create_head(name: str, embedding_size: int, num_classes: int, **kwargs: Any) -> MarginHead:
    """Build the margin head ``name``.

    Parameters
    ----------
    name
        One of :func:`list_heads` (``arcface``, ``cosface``, ``subcenter-arcface``,
        ``elastic-arc``, ``elastic-cos``, ``elastic-arc+``, ``elastic-cos+``).
    embedding_size
        D.
    num_classes
        C.
    **kwargs
        Options of that head (``scale``, ``margin`` (radians for angular margins),
        ``k``, ``sigma``, ``sample_rate``); those that are None are dropped so that the
        head's defaults apply.
    """
    cls = head_class(name)
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self", "embedding_size", "num_classes"}
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise ConfigError(f"head {name!r} has no option {', '.join(unknown)}; its options are: {', '.join(sorted(accepted))}")
    return cls(embedding_size, num_classes, **kwargs)
