"""``Registry``: one named table per kind of plug-in (algorithms, rules, steps, transports, runners, ...).

Every kind of component that YAML names is looked up in a registry: registering a taken name is an
error, an unknown name lists the valid ones with the closest match, and an entry given as
``"package.module:attribute"`` is imported on first use, so an optional package loads only when its
component is chosen and a missing one names the pip extra that installs it.

Examples
--------
>>> colours = Registry("colour", key="paint_args.colour")
>>> colours.register("red", lambda: "#f00")
>>> colours.get("red")()
'#f00'
>>> colours.get("rde")
Traceback (most recent call last):
...
fedml.errors.ConfigError: paint_args.colour: unknown colour 'rde'; did you mean red?; valid: red

"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from fedml.errors import ConfigError

T = TypeVar("T")


@dataclass(frozen=True)
class _Lazy:
    module: str
    attribute: str
    extra: str | None


class Registry(Generic[T]):
    """Names -> entries of one kind.

    Parameters
    ----------
    kind
        What an entry is, for messages (``"optimizer"``).
    key
        The config key that names an entry, for messages (``"train_args.federated_optimizer"``).
    case_sensitive
        With ``False``, names are matched ignoring case and stored upper-case (transport names).

    """

    changes = 0
    """Counts registrations in every registry, so a cache built from registries knows when it is stale."""

    def __init__(self, kind: str, key: str, *, case_sensitive: bool = True) -> None:
        self.kind = kind
        self.key = key
        self.case_sensitive = case_sensitive
        self._entries: dict[str, T | _Lazy] = {}
        self._settings: dict[str, Any] = {}

    def register(
        self,
        name: str,
        entry: T | str,
        *,
        extra: str | None = None,
        settings: Any = None,
        replace: bool = False,
    ) -> None:
        """Add ``entry`` under ``name``; a string ``"module:attribute"`` is imported on first ``get``.

        ``settings`` is the entry's ``ComponentSettings`` model (or ``"module:Model"``): the YAML keys
        it adds, which configuration loading collects from every registry (``settings_models``).

        Raises
        ------
        ConfigError
            If ``name`` is empty or already taken (unless ``replace``).

        """
        if not isinstance(name, str) or not name:
            raise ConfigError(f"a {self.kind} name must be a non-empty string, got {name!r}")
        name = self._normal(name)
        if name in self._entries and not replace:
            raise ConfigError(f"a {self.kind} named {name!r} is already registered")
        Registry.changes += 1
        self._entries[name] = _lazy(entry, extra) if isinstance(entry, str) else entry
        if settings is not None:
            self._settings[name] = _lazy(settings, extra) if isinstance(settings, str) else settings
        else:
            self._settings.pop(name, None)

    def get(self, name: str) -> T:
        """Return the entry registered as ``name``, importing it if it was registered lazily.

        Raises
        ------
        ConfigError
            If no entry has that name; the message lists the valid ones.
        ImportError
            If the entry's optional package is missing; the message names the extra that installs it.

        """
        entry = self._entries.get(self._normal(name)) if isinstance(name, str) else None
        if entry is None:
            raise ConfigError(self.unknown(name))
        return self._resolve(name, entry)

    def stamp(self) -> tuple[int, int]:
        """Return a value that changes whenever this registry's settings may have changed (for caches)."""
        return (Registry.changes, id(self._settings))

    def settings_models(self) -> list[Any]:
        """Return the settings models of the entries that declared one, in name order."""
        return [self._resolve(name, self._settings[name]) for name in sorted(self._settings)]

    def unknown(self, name: object) -> str:
        """Return the message for an unknown ``name``: the key, the closest match and the valid names."""
        valid = self.names()
        hint = suggest(str(name), valid)
        return f"{self.key}: unknown {self.kind} {name!r}{hint}; valid: {', '.join(valid)}"

    def names(self) -> list[str]:
        """Return the registered names, sorted."""
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self._normal(name) in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def _normal(self, name: str) -> str:
        return name if self.case_sensitive else name.upper()

    def _resolve(self, name: str, entry: Any) -> Any:
        if not isinstance(entry, _Lazy):
            return entry
        try:
            module = importlib.import_module(entry.module)
        except ImportError as exc:
            if entry.extra is None:
                raise
            raise ImportError(
                f"{self.kind} {name!r} needs a package that is not installed ({exc.name or exc}); install "
                f'it with: pip install -e ".[{entry.extra}]"  (or pip install "fedml[{entry.extra}]")'
            ) from exc
        return getattr(module, entry.attribute)


def _lazy(path: str, extra: str | None) -> _Lazy:
    module, _, attribute = path.partition(":")
    return _Lazy(module, attribute, extra)


def suggest(name: str, candidates: Any) -> str:
    """Return ``"; did you mean X?"`` for the closest candidate (case-insensitive match first), or ``""``."""
    pool = [str(c) for c in candidates]
    lowered = {c.lower(): c for c in pool}
    match = lowered.get(name.lower()) or next(
        iter(difflib.get_close_matches(name, pool, n=1, cutoff=0.6)), None
    )
    return f"; did you mean {match}?" if match else ""
