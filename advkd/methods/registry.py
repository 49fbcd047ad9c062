"""Methods by name. A method module registers itself with @register_method."""
from typing import Dict, Type

from .base import Method

_METHODS: Dict[str, Method] = {}


def register_method(cls: Type[Method]) -> Type[Method]:
    _METHODS[cls.name] = cls()
    return cls


def get_method(name: str) -> Method:
    if name not in _METHODS:
        raise KeyError(name)
    return _METHODS[name]


def method_names():
    return list(_METHODS)


def all_options():
    """Every method-specific option: name -> (Option, names of the methods that read it)."""
    table = {}
    for method in _METHODS.values():
        for name, option in method.options.items():
            table.setdefault(name, (option, []))[1].append(method.name)
    return table
