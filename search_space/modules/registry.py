"""A small explicit registry (STYLE.md 2): names map to block classes; an unknown name lists the valid ones."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Name -> object. ``register`` is a decorator; ``get`` raises KeyError listing the valid names."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            if name in self._items:
                raise KeyError(f"{self.kind} '{name}' is already registered")
            self._items[name] = obj
            return obj

        return deco

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            valid = ", ".join(sorted(self._items))
            raise KeyError(f"unknown {self.kind} '{name}'; valid {self.kind}s: {valid}") from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def __iter__(self) -> Iterator[tuple[str, T]]:
        return iter(sorted(self._items.items()))

    def __contains__(self, name: object) -> bool:
        return name in self._items


#: Backbone stage blocks: classes with ``from_stage(spec, stage, in_channels)`` and ``example()``.
STAGE_BLOCKS: Registry[type] = Registry("stage block")
#: Every block family, for the tests that build each one: name -> factory of (module, example forward args).
BLOCK_EXAMPLES: Registry[Callable[[], tuple[Any, tuple[Any, ...]]]] = Registry("block example")


def register_example(name: str, factory: Callable[[], Any], *inputs: int | list[int]) -> None:
    """Register a small instance of a block with its inputs: an int is a Tensor[2, c, 16, 16], a list of
    ints is one list argument of feature maps at 16, 8, 4 pixels (the detect head's input)."""

    def make() -> tuple[Any, tuple[Any, ...]]:
        import torch

        args: list[Any] = []
        for spec in inputs:
            if isinstance(spec, list):
                args.append([torch.randn(2, c, 16 >> i, 16 >> i) for i, c in enumerate(spec)])
            else:
                args.append(torch.randn(2, spec, 16, 16))
        return factory(), tuple(args)

    BLOCK_EXAMPLES.register(name)(make)
#: SPP variants: classes (in_channels, out_channels).
SPP_BLOCKS: Registry[type] = Registry("spp block")
#: Necks: classes with ``from_spec(spec, in_channels=(c3, c4, c5))``.
NECKS: Registry[type] = Registry("neck")
