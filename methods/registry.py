"""The methods table: one ordered name -> class table, built from a list; a name given twice is an
error, not a silent replacement."""
from typing import Dict, Iterable, List, Tuple, Type

from .base import Method, Option


class MethodTable:
    def __init__(self, classes: Iterable[Type[Method]] = ()):
        self._classes: Dict[str, Type[Method]] = {}
        for cls in classes:
            self.register(cls)

    def register(self, cls: Type[Method]) -> Type[Method]:
        """Add a method (usable as a class decorator); its name must be new."""
        if not cls.name:
            raise ValueError(f"{cls.__name__} has no name")
        if cls.name in self._classes:
            raise ValueError(f"method {cls.name!r} is registered twice")
        self._classes[cls.name] = cls
        return cls

    def get(self, name: str) -> Type[Method]:
        if name not in self._classes:
            raise KeyError(name)
        return self._classes[name]

    def names(self) -> List[str]:
        return list(self._classes)

    def all_options(self) -> Dict[str, Tuple[Option, List[str]]]:
        """Every method-specific option: name -> (Option, names of the methods that declare it)."""
        table: Dict[str, Tuple[Option, List[str]]] = {}
        for cls in self._classes.values():
            for name, option in cls.options.items():
                table.setdefault(name, (option, []))[1].append(cls.name)
        return table
