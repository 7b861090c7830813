"""`evolve`: a fast `dataclasses.replace` for the fleet model's frozen, slotted types."""

from __future__ import annotations

_EVOLVERS: dict[type, tuple[frozenset[str], object]] = {}


def _compile_evolver(cls: type):
    # Generated like dataclasses' own __init__: one straight-line function per class, no per-field loop.
    names = [n for n in cls.__slots__ if not n.startswith("_")]
    caches = [n for n in cls.__slots__ if n.startswith("_")]
    lines = ["def evolve(obj, changes):", "    new = _new(cls)"]
    lines += [f"    _set(new, {n!r}, changes[{n!r}] if {n!r} in changes else obj.{n})" for n in names]
    lines += [f"    _set(new, {n!r}, None)" for n in caches]
    lines.append("    return new")
    namespace = {"_new": object.__new__, "_set": object.__setattr__, "cls": cls}
    exec("\n".join(lines), namespace)  # noqa: S102 - source built from the class's own slot names
    return frozenset(names), namespace["evolve"]


def evolve(obj, **changes):
    """`dataclasses.replace` for the fleet model's frozen, slotted dataclasses, without re-running `__init__`.

    The simulator applies hundreds of thousands of updates per run; `replace` costs several times more. Because
    `__post_init__` does not run, values must already be in their final form (`FleetSnapshot.evolve` wraps
    mappings itself). Raises TypeError for a name that is not a field. Derived caches (`_`-prefixed slots)
    are reset to None.
    """
    cls = type(obj)
    compiled = _EVOLVERS.get(cls)
    if compiled is None:
        compiled = _EVOLVERS[cls] = _compile_evolver(cls)
    fields, evolver = compiled
    if not changes.keys() <= fields:
        raise TypeError(f"{cls.__name__} has no field(s) {', '.join(sorted(changes.keys() - fields))}")
    return evolver(obj, changes)
