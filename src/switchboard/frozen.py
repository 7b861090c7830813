"""Fast construction and update of frozen, slotted dataclasses (the fleet model's and the policies' values).

- `evolve(obj, **changes)`: `dataclasses.replace` without re-running `__init__`.
- `@fast_init`: the same `__init__` as the dataclass's, setting slots directly.

Both exist because the simulator builds and updates these immutable values a few dozen times per request, and
a frozen dataclass pays for its immutability on every field it sets (`object.__setattr__` through a global
lookup per field). Measured for issue 16 (`benchmarks/frozen_ab.py`: 3 alternating runs each): replaying the
conversation hour with `switchboard` takes 2.63–2.98 CPU-s with them and 4.54–5.08 with plain dataclasses
(1.7×, the same results), so they stay; msgspec Structs and attrs were not tried.
"""

from __future__ import annotations

import dataclasses
import inspect

_EVOLVERS: dict[type, object] = {}
_CACHE_KEEPING_EVOLVERS: dict[type, object] = {}
_KEEP = object()
"""Default of every parameter of a compiled evolver: "keep the old value"."""


def _compile_evolver(cls: type, keep_caches: bool):
    # Generated like dataclasses' own __init__: one straight-line function per class, with every field a
    # keyword-only parameter, so Python's own argument binding rejects unknown names and nothing loops per field.
    names = [n for n in cls.__slots__ if not n.startswith("_")]
    caches = [n for n in cls.__slots__ if n.startswith("_")]
    if any(n.endswith("_") for n in names):
        raise TypeError(f"{cls.__name__}: field names ending in '_' would clash with the evolver's own names")
    params = ", ".join(f"{n}=_KEEP_" for n in names)
    lines = [f"def evolve(_obj_, *, {params}):" if names else "def evolve(_obj_):", "    new_ = _new_(cls_)"]
    # Each slot is stored through its own descriptor (what object.__setattr__ would look up by name every time).
    lines += [f"    _set_{n}_(new_, _obj_.{n} if {n} is _KEEP_ else {n})" for n in names]
    lines += [f"    _set_{n}_(new_, _obj_.{n})" if keep_caches else f"    _set_{n}_(new_, None)" for n in caches]
    lines.append("    return new_")
    # Helper names end in "_", which no field name does.
    namespace = {"_new_": object.__new__, "cls_": cls, "_KEEP_": _KEEP}
    namespace.update({f"_set_{n}_": cls.__dict__[n].__set__ for n in names + caches})
    exec("\n".join(lines), namespace)  # noqa: S102 - source built from the class's own slot names
    evolver = namespace["evolve"]
    evolver.__qualname__ = f"evolve[{cls.__name__}]"
    return evolver


def evolver_of(cls: type, *, keep_caches: bool = False):
    """The compiled `evolve` of `cls`: `evolver_of(cls)(obj, **changes)` is `evolve(obj, **changes)` for an
    instance of exactly `cls` (an unknown name raises Python's own TypeError), for the hottest update paths.

    With `keep_caches` the derived caches are copied instead of reset: only for a class that knows which of
    its changes leave them valid (`FleetSnapshot.evolve`).
    """
    table = _CACHE_KEEPING_EVOLVERS if keep_caches else _EVOLVERS
    evolver = table.get(cls)
    if evolver is None:
        evolver = table[cls] = _compile_evolver(cls, keep_caches)
    return evolver


def evolve(obj, **changes):
    """`dataclasses.replace` for the fleet model's frozen, slotted dataclasses, without re-running `__init__`.

    The simulator applies hundreds of thousands of updates per run; `replace` costs several times more. Because
    `__post_init__` does not run, values must already be in their final form (`FleetSnapshot.evolve` wraps
    mappings itself). Raises TypeError for a name that is not a field. Derived caches (`_`-prefixed slots)
    are reset to None.
    """
    cls = type(obj)
    evolver = _EVOLVERS.get(cls)
    if evolver is None:
        evolver = evolver_of(cls)
    try:
        return evolver(obj, **changes)
    except TypeError:
        unknown = sorted(n for n in changes if n.startswith("_") or n not in cls.__slots__)
        if unknown:
            raise TypeError(f"{cls.__name__} has no field(s) {', '.join(unknown)}") from None
        raise


_NO_DEFAULT = object()


def fast_init(cls: type) -> type:
    """Class decorator (above `@dataclasses.dataclass(frozen=True, slots=True)`): replace the generated
    `__init__` by one with the same signature, defaults and effects — `default_factory` fields, `init=False`
    fields with a default, `__post_init__` — that stores each field through its slot descriptor instead of
    `object.__setattr__`. About twice as fast; the instance is as frozen as before once built.

    Raises TypeError for a class it cannot reproduce exactly (not a slotted dataclass; `InitVar` parameters).
    """
    if not dataclasses.is_dataclass(cls) or "__slots__" not in cls.__dict__:
        raise TypeError(f"{cls.__name__}: fast_init needs a slotted dataclass")
    namespace: dict = {"_NO_DEFAULT_": _NO_DEFAULT}
    positional, keyword_only, body = [], [], []
    for f in dataclasses.fields(cls):
        name = f.name
        if name == "self" or name.endswith("_"):
            raise TypeError(f"{cls.__name__}.{name}: a name fast_init's generated code uses for itself")
        namespace[f"_set_{name}_"] = cls.__dict__[name].__set__
        if f.init:
            if f.default is not dataclasses.MISSING:
                namespace[f"_default_{name}_"] = f.default
                param = f"{name}=_default_{name}_"
            elif f.default_factory is not dataclasses.MISSING:
                namespace[f"_factory_{name}_"] = f.default_factory
                param = f"{name}=_NO_DEFAULT_"
                body.append(f"    if {name} is _NO_DEFAULT_: {name} = _factory_{name}_()")
            else:
                param = name
            (keyword_only if f.kw_only else positional).append(param)
            body.append(f"    _set_{name}_(self, {name})")
        elif f.default is not dataclasses.MISSING:
            namespace[f"_default_{name}_"] = f.default
            body.append(f"    _set_{name}_(self, _default_{name}_)")
        elif f.default_factory is not dataclasses.MISSING:
            namespace[f"_factory_{name}_"] = f.default_factory
            body.append(f"    _set_{name}_(self, _factory_{name}_())")
    if hasattr(cls, "__post_init__"):
        body.append("    self.__post_init__()")
    params = ", ".join(["self", *positional, *(["*", *keyword_only] if keyword_only else [])])
    exec(f"def __init__({params}):\n" + "\n".join(body or ["    pass"]), namespace)  # noqa: S102 - from the fields
    init = namespace["__init__"]
    # The same parameters as the dataclass's own __init__ (an InitVar would be one we do not have).
    expected = [(p.name, p.kind) for p in inspect.signature(cls.__init__).parameters.values()]
    if [(p.name, p.kind) for p in inspect.signature(init).parameters.values()] != expected:
        raise TypeError(f"{cls.__name__}: fast_init cannot reproduce this __init__ (InitVar fields?)")
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    cls.__init__ = init
    return cls
