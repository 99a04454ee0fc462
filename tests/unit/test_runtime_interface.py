"""The runtime implements the interface the agents are written against (``framebus.agents.base.Runtime``):
agents never import the runtime, so this is where a renamed or dropped method would show."""

from __future__ import annotations

import inspect
import re

from framebus.agents import base
from framebus.streams.runtime import Runtime


def _members(cls) -> dict[str, object]:
    return {n: v for n, v in vars(cls).items() if not n.startswith("_")}


def _params(fn) -> list[str]:
    return [p for p in inspect.signature(fn).parameters if p != "self"]  # static or not, as called on rt


def test_every_method_of_the_interface_exists_with_the_same_parameters():
    for name, proto in _members(base.Runtime).items():
        if not callable(proto):
            continue
        impl = getattr(Runtime, name, None)
        assert impl is not None, f"Runtime has no {name}"
        assert inspect.iscoroutinefunction(impl) == inspect.iscoroutinefunction(proto), name
        assert _params(impl) == _params(proto), name


def test_every_attribute_of_the_interface_is_provided():
    """A class attribute or property, or assigned in ``__init__``."""
    init = inspect.getsource(Runtime.__init__)
    for name in base.Runtime.__annotations__:
        assert hasattr(Runtime, name) or re.search(rf"\bself\.{name}\s*(:[^=]+)?=", init), f"Runtime has no {name}"
