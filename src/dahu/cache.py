"""Bounded, thread-safe LRU cache shared between instances (public API).

Plugins use :class:`DataCache` to keep expensive objects (an azimuthal integrator, a
mask, a calibration) between jobs: by default every instance shares the same storage
(the Borg pattern), so a plugin can write ``DataCache()[key] = value`` in one job and
find it in the next.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

__all__ = ["DataCache", "MissingKey"]


class MissingKey(KeyError, ValueError):
    """``cache[key]`` of a key the cache does not hold: a ``KeyError``, as for a dict,
    and a ``ValueError``, which the original raised (plugins catch either)."""


class DataCache(dict):
    """A dict-like cache holding at most ``max_size`` items, least recently used first out.

    :param max_size: the number of items kept; the oldest is dropped when full
    :param borg: when true (the default) all Borg instances share one storage, whose size
        is the ``max_size`` of the first one made (later sizes are ignored); when false the
        instance has its own.
    """

    _shared_state: dict[str, Any] = {}
    _shared_lock = threading.Lock()

    def __init__(self, max_size: int = 10, borg: bool = True):
        super().__init__()
        if borg:
            with DataCache._shared_lock:
                if not DataCache._shared_state:
                    DataCache._shared_state.update(
                        _data=OrderedDict(), _lock=threading.RLock(), max_size=max_size
                    )
            # the shared storage keeps the size it was first made with, as in the original
            self.__dict__ = DataCache._shared_state
        else:
            self._data = OrderedDict()
            self._lock = threading.RLock()
            self.max_size = max_size

    def _shrink(self) -> None:
        while len(self._data) > max(self.max_size, 0):
            self._data.popitem(last=False)

    def __repr__(self) -> str:
        with self._lock:
            return f"DataCache(max_size={self.max_size}, keys={list(self._data)!r})"

    def __setitem__(self, key: Any, value: Any) -> None:
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            self._shrink()

    def __getitem__(self, key: Any) -> Any:
        with self._lock:
            try:
                value = self._data[key]
            except KeyError:
                raise MissingKey(key) from None
            self._data.move_to_end(key)
            return value

    def __delitem__(self, key: Any) -> None:
        with self._lock:
            del self._data[key]

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._data

    def has_key(self, key: Any) -> bool:
        """Tell whether ``key`` is in the cache."""
        return key in self

    def __len__(self) -> int:
        with self._lock:
            return len(self._data)

    def __iter__(self):
        return iter(self.keys())

    def __bool__(self) -> bool:
        return len(self) > 0

    def get(self, key: Any, default: Any = None) -> Any:
        """Return the value of ``key`` (marking it recently used); if it is missing,
        store ``default`` under ``key`` (unless it is None) and return it, as the
        original does: plugins fill their caches with ``cache.get(key, new_value)``."""
        with self._lock:
            if key in self._data:
                self._data.move_to_end(key)
                return self._data[key]
            if default is not None:
                self[key] = default
            return default

    def keys(self) -> list:
        """Return the keys, oldest first."""
        with self._lock:
            return list(self._data.keys())

    def values(self) -> list:
        """Return the values, oldest first."""
        with self._lock:
            return list(self._data.values())

    def items(self) -> list:
        """Return the ``(key, value)`` pairs, oldest first."""
        with self._lock:
            return list(self._data.items())

    def pop(self, key: Any, *default: Any) -> Any:
        """Remove ``key`` and return its value (or ``default`` if given and missing)."""
        with self._lock:
            return self._data.pop(key, *default)

    def clear(self) -> None:
        """Empty the cache."""
        with self._lock:
            self._data.clear()

    def setdefault(self, key: Any, default: Any = None) -> Any:
        """Return the value of ``key``, storing ``default`` first if it is missing."""
        with self._lock:
            if key not in self._data:
                self[key] = default
            return self[key]

    def update(self, *args: Any, **kwargs: Any) -> None:
        """Insert every item of a mapping and of the keyword arguments."""
        with self._lock:
            for key, value in dict(*args, **kwargs).items():
                self[key] = value
