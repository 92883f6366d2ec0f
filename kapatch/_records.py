"""Value types that are cheap to define: what kapatch uses instead of ``@dataclass``.

kapatch defines its configuration types at interpreter start when ``KAPATCH_ENABLED=1``.
``dataclasses`` costs ~13 ms to import there (it imports ``inspect``), and each frozen,
slotted dataclass then costs 0.6-1 ms to define, because ``__init__``, ``__eq__``,
``__hash__``, ``__setattr__`` and ``__delattr__`` are generated with ``exec``. ``@record``
shares pre-written functions for all but ``__init__`` (~40 us per class), builds a class's
first instances through a generic ``__init__``, and compiles the class's own (~45 us, once)
only for a class built often: such a record is then built as fast as a dataclass, which
the claimed connect paths need (a record or two per connection).

A record has ``__slots__``, keyword and positional construction with defaults
(``field(default_factory=...)`` for mutable ones) and a dataclass's error messages,
``__post_init__``, ``==`` by class and fields, ``hash`` (computed once) and immutability
when frozen (the default), a dataclass-style ``repr``, ``replace()``, ``fields()`` and
``as_dict()``. Type checkers see a dataclass, through ``dataclass_transform`` (PEP 681).
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing itself costs ~7 ms at start; type checkers treat this name as True
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, TypeVar

    from typing_extensions import dataclass_transform

    _T = TypeVar("_T")
    _R = TypeVar("_R")
else:

    def dataclass_transform(**_: object) -> object:
        return lambda function: function


__all__ = ["FrozenRecordError", "as_dict", "field", "fields", "record", "replace"]


class FrozenRecordError(AttributeError):
    """Assigning to a field of a frozen record (dataclasses' ``FrozenInstanceError``)."""


class _Factory:
    __slots__ = ("make",)

    def __init__(self, make: Callable[[], object]) -> None:
        self.make = make


def field(*, default_factory: Callable[[], _T]) -> _T:
    """A default built fresh for each instance, e.g. ``field(default_factory=list)``."""
    return _Factory(default_factory)  # type: ignore[return-value]  # replaced by record()


_NO_DEFAULT = object()


@dataclass_transform(frozen_default=True, field_specifiers=(field,))
def record(cls: type[_R] | None = None, /, *, frozen: bool = True) -> Any:
    """Class decorator: turn annotated class attributes into the fields of a value type."""

    def build(cls: type[_R]) -> type[_R]:
        return _build(cls, frozen=frozen)

    return build if cls is None else build(cls)


def fields(instance_or_class: object) -> tuple[str, ...]:
    """Field names in declaration order."""
    names: tuple[str, ...] = getattr(instance_or_class, "__record_fields__")  # noqa: B009
    return names


def as_dict(instance: object) -> dict[str, Any]:
    """``{field: value}``, shallow: nested records stay records."""
    return {name: getattr(instance, name) for name in fields(instance)}


def replace(instance: _R, /, **changes: object) -> _R:
    """A copy of *instance* with *changes*, validated again by ``__post_init__``."""
    names = fields(instance)
    unknown = set(changes) - set(names)
    if unknown:
        raise TypeError(f"{type(instance).__name__} has no field {sorted(unknown)[0]!r}")
    values = {name: changes[name] if name in changes else getattr(instance, name) for name in names}
    return type(instance)(**values)


def _build(cls: type[_R], *, frozen: bool) -> type[_R]:
    own = cls.__dict__
    names = tuple(
        name
        for name, annotation in own.get("__annotations__", {}).items()
        if not str(annotation).startswith(("ClassVar", "typing.ClassVar"))
    )
    defaults = {name: own[name] for name in names if name in own}
    first_default = next((i for i, name in enumerate(names) if name in defaults), len(names))
    for name in names[first_default:]:
        if name not in defaults:  # as for a function's parameters
            raise TypeError(f"{cls.__qualname__}: field {name!r} has no default but follows one that has")
    namespace = {key: value for key, value in own.items() if key not in defaults}
    for inherited in ("__dict__", "__weakref__"):
        namespace.pop(inherited, None)
    namespace.update(
        __slots__=(*names, "_record_hash") if frozen else names,
        __record_fields__=names,
        __match_args__=names,
        __repr__=_repr,
        __eq__=_eq,
        __reduce__=_reduce,
    )
    if frozen:
        namespace.update(__setattr__=_frozen_setattr, __delattr__=_frozen_delattr, __hash__=_hash)
    else:
        namespace["__hash__"] = None  # mutable and equal by value: unhashable, as dataclasses do
    metaclass: Any = type(cls)
    built: type[_R] = metaclass(cls.__name__, cls.__bases__, namespace)
    built.__qualname__ = cls.__qualname__
    type.__setattr__(built, "__init__", _first_init(built, defaults))
    return built


_COMPILE_AFTER = 32
"""Instances a class builds through the generic ``__init__`` before its own is compiled."""


def _first_init(cls: type, defaults: dict[str, object]) -> Callable[..., None]:
    """An ``__init__`` that reads the fields generically, then compiles the class's own.

    Compiling an ``__init__`` (as dataclasses do, with ``exec``) costs ~0.5 M instructions
    per class, and most records are built a handful of times, at interpreter start: those
    never pay it. A class built more often (per connection) gets its compiled ``__init__``
    (~0.4 us an instance) on its ``_COMPILE_AFTER``-th instance. A call whose arguments do
    not fit compiles at once, so the error is Python's own, word for word.
    """
    names = fields(cls)
    setters = tuple(cls.__dict__[name].__set__ for name in names)
    post_init = getattr(cls, "__post_init__", None) is not None
    built = [0]

    def __init__(self: object, *args: object, **kwargs: object) -> None:
        built[0] += 1
        if built[0] < _COMPILE_AFTER and len(args) <= len(names):
            values = list(args)
            taken = 0
            for name in names[len(args) :]:
                if name in kwargs:
                    values.append(kwargs[name])
                    taken += 1
                    continue
                default = defaults.get(name, _NO_DEFAULT)
                if default is _NO_DEFAULT:
                    break  # missing: the compiled __init__ says so
                values.append(default.make() if isinstance(default, _Factory) else default)
            else:
                if taken == len(kwargs):  # else unknown, or given twice: the compiled one says so
                    for setter, value in zip(setters, values, strict=True):
                        setter(self, value)
                    if post_init:
                        self.__post_init__()  # type: ignore[attr-defined]
                    return
        real = _compile_init(cls, defaults)
        type.__setattr__(cls, "__init__", real)
        real(self, *args, **kwargs)

    return __init__


def _compile_init(cls: type, defaults: dict[str, object]) -> Callable[..., None]:
    names = fields(cls)
    scope: dict[str, object] = {"_MISSING": _NO_DEFAULT}
    parameters, body = [], []
    for index, name in enumerate(names):
        default = defaults.get(name, _NO_DEFAULT)
        if isinstance(default, _Factory):
            scope[f"_factory{index}"] = default.make
            parameters.append(f"{name}=_MISSING")
            body.append(f"    if {name} is _MISSING:\n        {name} = _factory{index}()")
        elif default is not _NO_DEFAULT:
            scope[f"_default{index}"] = default
            parameters.append(f"{name}=_default{index}")
        else:
            parameters.append(name)
        # The slot's own setter: it bypasses a frozen record's __setattr__, as dataclasses do.
        scope[f"_set{index}"] = cls.__dict__[name].__set__
        body.append(f"    _set{index}(self, {name})")
    if getattr(cls, "__post_init__", None) is not None:
        body.append("    self.__post_init__()")
    source = f"def __init__(self, {', '.join(parameters)}):\n" + "\n".join(body or ["    pass"]) + "\n"
    exec(source, scope)  # generated from field names only, as dataclasses do
    init: Callable[..., None] = scope["__init__"]  # type: ignore[assignment]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    return init


def _values(instance: object) -> tuple[object, ...]:
    return tuple(getattr(instance, name) for name in fields(instance))


def _repr(self: object) -> str:
    shown = ", ".join(f"{name}={value!r}" for name, value in as_dict(self).items())
    return f"{type(self).__qualname__}({shown})"


def _eq(self: object, other: object) -> Any:  # bool, or NotImplemented for other classes
    if other.__class__ is not self.__class__:
        return NotImplemented
    return _values(self) == _values(other)


def _hash(self: object) -> int:
    # Computed once: policies and plans are hashed on every connection (cache keys).
    try:
        return self._record_hash  # type: ignore[attr-defined, no-any-return]
    except AttributeError:
        found = hash(_values(self))
        object.__setattr__(self, "_record_hash", found)
        return found


def _reduce(self: object) -> tuple[object, tuple[object, ...]]:
    return type(self), _values(self)  # pickle and copy rebuild through __init__ (validated)


def _frozen_setattr(self: object, name: str, value: object) -> None:
    raise FrozenRecordError(f"cannot assign to field {name!r}: {type(self).__name__} is frozen")


def _frozen_delattr(self: object, name: str) -> None:
    raise FrozenRecordError(f"cannot delete field {name!r}: {type(self).__name__} is frozen")
