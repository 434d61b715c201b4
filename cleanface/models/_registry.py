"""The backbone registry: entry points register by name, one factory builds them.

Every entry point takes ``embedding_size`` and ``input_size`` (square input side in
pixels) plus its own keyword options, and returns an ``nn.Module`` whose
``forward(x (B, 3, H, W)) -> (B, D)`` gives un-normalised embeddings.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, TypeVar

from torch import nn

from cleanface.errors import ConfigError

_BACKBONES: dict[str, Callable[..., nn.Module]] = {}

F = TypeVar("F", bound=Callable[..., nn.Module])


def register_backbone(fn: F) -> F:
    """Register ``fn`` as a backbone entry point under its own ``__name__``."""
    name = fn.__name__
    if name in _BACKBONES:
        raise ValueError(f"backbone {name!r} is registered twice")
    _BACKBONES[name] = fn
    return fn


def list_backbones() -> list[str]:
    """Names of all registered backbones, sorted."""
    return sorted(_BACKBONES)


def create_backbone(name: str, embedding_size: int = 512, input_size: int = 112, **kwargs: Any) -> nn.Module:
    """Build the backbone ``name``.

    Parameters
    ----------
    name
        One of :func:`list_backbones` (``iresnet18``, ``iresnet34``, ``iresnet50``,
        ``iresnet100``, ``mobilefacenet``, ``compact``).
    embedding_size
        D, the length of the output embedding.
    input_size
        Side in pixels of the square input images the model is built for.
    **kwargs
        Options of that backbone (for example ``dropout`` or ``width``); those that are
        None are dropped so that the backbone's own defaults apply.

    Returns
    -------
    nn.Module
        ``forward(x (B, 3, input_size, input_size)) -> (B, embedding_size)``, with the
        attributes ``embedding_size`` and ``input_size``.
    """
    fn = _BACKBONES.get(name)
    if fn is None:
        raise ConfigError(f"unknown backbone {name!r}; choose one of: {', '.join(list_backbones())}")
    for what, value in (("embedding_size", embedding_size), ("input_size", input_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ConfigError(f"backbone {what} must be a positive integer, got {value!r}")
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    accepted = inspect.signature(fn).parameters
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        options = sorted(set(accepted) - {"embedding_size", "input_size"})
        raise ConfigError(
            f"backbone {name!r} has no option {', '.join(unknown)}; its options are: {', '.join(options) or 'none'}"
        )
    return fn(embedding_size=embedding_size, input_size=input_size, **kwargs)
