"""kapatch's value types (``@record``) behave as the frozen, slotted dataclasses they replace."""

from __future__ import annotations

import copy
import dataclasses
import pickle
from typing import ClassVar

import pytest

from kapatch._records import FrozenRecordError, as_dict, field, fields, record, replace
from kapatch.policy import Policy


@record
class Point:
    """A frozen record."""

    x: int
    y: int = 0
    label: str = "p"
    dimensions: ClassVar[int] = 2

    def __post_init__(self) -> None:
        if self.x < 0:
            raise ValueError("x must not be negative")


@record(frozen=False)
class Bag:
    name: str
    items: list[int] = field(default_factory=list)


def test_fields_positional_keyword_and_defaults() -> None:
    assert fields(Point) == ("x", "y", "label")
    assert Point(1) == Point(x=1, y=0, label="p") == Point(1, 0, "p")
    assert Point(1, label="q").label == "q"
    assert Point.dimensions == 2
    assert Point.__match_args__ == ("x", "y", "label")


def test_equality_is_by_class_and_fields() -> None:
    assert Point(1, 2) != Point(1, 3)
    assert Point(1, 2) != (1, 2, "p")
    assert hash(Point(1, 2)) == hash(Point(1, 2))
    assert len({Point(1, 2), Point(1, 2), Point(2, 1)}) == 2


def test_frozen_records_refuse_changes_and_have_no_dict() -> None:
    point = Point(1)
    with pytest.raises(FrozenRecordError, match="cannot assign to field 'x': Point is frozen"):
        point.x = 2  # type: ignore[misc]
    with pytest.raises(AttributeError):
        del point.y  # type: ignore[misc]
    assert not hasattr(point, "__dict__")
    with pytest.raises(AttributeError):
        point.other = 1  # type: ignore[attr-defined]


def test_post_init_validates_construction_and_replace() -> None:
    with pytest.raises(ValueError, match="x must not be negative"):
        Point(-1)
    with pytest.raises(ValueError, match="x must not be negative"):
        replace(Point(1), x=-1)
    assert replace(Point(1, 2), y=5) == Point(1, 5)
    with pytest.raises(TypeError, match="Point has no field 'z'"):
        replace(Point(1), z=1)


# The same fields as a dataclass also called Point, so that their messages can be compared.
DataclassPoint = dataclasses.make_dataclass(
    "Point", [("x", int), ("y", int, 0), ("label", str, "p")], frozen=True
)


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [((), {}), ((1, 2, "a", 4), {}), ((1,), {"x": 2}), ((1,), {"z": 2}), ((), {"y": 1})],
)
def test_bad_arguments_fail_exactly_as_for_a_dataclass(
    args: tuple[object, ...], kwargs: dict[str, object]
) -> None:
    with pytest.raises(TypeError) as expected:
        DataclassPoint(*args, **kwargs)  # type: ignore[arg-type, misc]
    with pytest.raises(TypeError) as raised:
        Point(*args, **kwargs)  # type: ignore[arg-type, misc]
    assert str(raised.value) == str(expected.value)


def test_a_required_field_after_a_defaulted_one_is_refused_at_definition() -> None:
    with pytest.raises(TypeError, match="Bad: field 'y' has no default but follows one that has"):

        @record
        class Bad:
            x: int = 0
            y: int


def test_mutable_records_get_fresh_factory_defaults_and_are_unhashable() -> None:
    first, second = Bag("a"), Bag("b")
    first.items.append(1)
    assert second.items == []
    first.name = "c"
    assert first == Bag("c", [1])
    with pytest.raises(TypeError):
        hash(first)


def test_repr_as_dict_pickle_and_copy() -> None:
    point = Point(1, 2, "q")
    assert repr(point) == "Point(x=1, y=2, label='q')"
    assert as_dict(point) == {"x": 1, "y": 2, "label": "q"}
    assert pickle.loads(pickle.dumps(point)) == point
    assert copy.deepcopy(point) == point
    policy = Policy(idle=30, interval=5, count=3)
    assert pickle.loads(pickle.dumps(policy)) == policy
    assert copy.copy(policy) == policy


def _fresh_class() -> type:
    @record(frozen=False)
    class Fresh:
        name: str
        size: int = 3
        items: list[int] = field(default_factory=list)

        def __post_init__(self) -> None:
            self.size += 1

    return Fresh


def test_the_first_instances_are_built_generically_then_the_class_compiles_its_own() -> None:
    from kapatch import _records

    fresh = _fresh_class()
    generic = fresh.__init__
    first = [fresh("a"), fresh("b", 5), fresh(name="c", items=[1]), fresh("d", items=[2], size=0)]
    assert fresh.__init__ is generic  # nothing compiled for a class built a few times
    assert [(f.name, f.size, f.items) for f in first] == [
        ("a", 4, []),
        ("b", 6, []),
        ("c", 4, [1]),
        ("d", 1, [2]),
    ]
    assert first[0].items is not first[1].items  # a fresh factory default each time
    for _ in range(_records._COMPILE_AFTER):
        fresh("e")
    assert fresh.__init__ is not generic
    assert fresh.__init__.__qualname__.endswith("Fresh.__init__")
    assert (fresh("f", 1).name, fresh("f", 1).size) == ("f", 2)


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        ((), {}),
        ((1, 2, "a", 4), {}),
        ((1,), {"x": 2}),
        ((1,), {"z": 2}),
        ((), {"y": 1}),
        ((), {"x": 1, "q": 2}),
    ],
)
def test_bad_arguments_to_a_class_not_yet_compiled_fail_as_for_a_dataclass(
    args: tuple[object, ...], kwargs: dict[str, object]
) -> None:
    @record
    class Point:  # a class of its own: the module's Point may be compiled already
        x: int
        y: int = 0
        label: str = "p"

    Point.__qualname__ = "Point"  # as the dataclass's, for the messages to compare
    with pytest.raises(TypeError) as expected:
        DataclassPoint(*args, **kwargs)  # type: ignore[arg-type, misc]
    with pytest.raises(TypeError) as raised:
        Point(*args, **kwargs)  # type: ignore[arg-type, misc]
    assert str(raised.value) == str(expected.value)
