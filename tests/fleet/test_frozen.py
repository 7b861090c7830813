"""`fast_init` builds the same objects as the dataclass's own `__init__`; `evolve` is `dataclasses.replace`."""

from __future__ import annotations

import dataclasses
import inspect

import pytest

from switchboard.frozen import evolve, evolver_of, fast_init


def _twin_classes():
    def body(cls_name):
        @dataclasses.dataclass(frozen=True, slots=True)
        class Value:
            a: int
            b: float = 1.5
            c: tuple = dataclasses.field(default_factory=tuple)
            _derived: object = dataclasses.field(default=None, init=False, repr=False, compare=False)
            d: str = dataclasses.field(default="x", kw_only=True)
            e: list = dataclasses.field(default_factory=list, init=False)

            def __post_init__(self) -> None:
                object.__setattr__(self, "_derived", (self.a, self.b))

        Value.__qualname__ = cls_name
        return Value

    return body("Plain"), fast_init(body("Fast"))


@pytest.mark.parametrize("args, kwargs", [((1,), {}), ((1, 2.0), {}), ((1, 2.0, (3,)), {"d": "y"}),
                                          ((), {"a": 4, "c": (5,), "d": "z"})])
def test_fast_init_builds_what_the_dataclass_init_builds(args, kwargs):
    plain_cls, fast_cls = _twin_classes()
    plain, fast = plain_cls(*args, **kwargs), fast_cls(*args, **kwargs)
    assert dataclasses.asdict(plain) == dataclasses.asdict(fast)
    assert plain._derived == fast._derived and fast.e == [] and fast.e is not fast_cls(1).e
    assert [(p.name, p.kind) for p in inspect.signature(plain_cls.__init__).parameters.values()] == \
        [(p.name, p.kind) for p in inspect.signature(fast_cls.__init__).parameters.values()]
    with pytest.raises(dataclasses.FrozenInstanceError):
        fast.a = 2  # type: ignore[misc]


def test_fast_init_rejects_bad_calls_like_the_dataclass():
    plain_cls, fast_cls = _twin_classes()
    for bad in [((), {}), ((1,), {"z": 1}), ((1, 2.0, (), "pos"), {})]:
        with pytest.raises(TypeError):
            plain_cls(*bad[0], **bad[1])
        with pytest.raises(TypeError):
            fast_cls(*bad[0], **bad[1])


def test_fast_init_refuses_what_it_cannot_reproduce():
    @dataclasses.dataclass(frozen=True, slots=True)
    class WithInitVar:
        a: int
        scale: dataclasses.InitVar[int] = 1

        def __post_init__(self, scale: int) -> None:
            pass

    with pytest.raises(TypeError, match="cannot reproduce"):
        fast_init(WithInitVar)

    @dataclasses.dataclass(frozen=True)
    class NoSlots:
        a: int

    with pytest.raises(TypeError, match="slotted"):
        fast_init(NoSlots)


def test_evolve_is_replace_and_resets_or_keeps_caches():
    _, fast_cls = _twin_classes()
    value = fast_cls(1, d="q")
    changed = evolve(value, b=9.0)
    assert changed == dataclasses.replace(value, b=9.0)  # every compared field
    assert changed._derived is None  # a derived cache is reset: __post_init__ does not run
    assert evolver_of(fast_cls, keep_caches=True)(value, b=9.0)._derived == (1, 1.5)
    with pytest.raises(TypeError, match="no field"):
        evolve(value, _derived=1)
