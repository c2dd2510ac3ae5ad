"""Names of a package imported on first use (PEP 562), so that importing the package costs nothing."""
from __future__ import annotations

import importlib


def lazy_exports(package: str, exports: dict[str, str], aliases: dict[str, str] | None = None):
    """(`__getattr__`, `__dir__`) for `package`: name -> the module that defines it (a leading '.' is relative to
    the package); `aliases`: exported name -> its name in that module."""
    aliases = aliases or {}

    def __getattr__(name: str):
        if name in exports:
            module = importlib.import_module(exports[name], package)
            value = getattr(module, aliases.get(name, name))
            vars(importlib.import_module(package))[name] = value
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted(list(vars(importlib.import_module(package))) + list(exports))

    return __getattr__, __dir__
