"""Find over-the-air tensors inside any protobuf message by walking its descriptor (no per-RPC code)."""

from __future__ import annotations

from collections.abc import Iterator
from functools import cache

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from shared.pb import air_pb2

AIR = air_pb2.AirTensor.DESCRIPTOR


@cache
def carries_air(desc: Descriptor) -> bool:
    """Whether a message type can contain an ``AirTensor`` at any depth (cached per type)."""
    return _carries(desc, frozenset())


def _carries(desc: Descriptor, seen: frozenset[str]) -> bool:
    if desc.full_name == AIR.full_name:
        return True
    if desc.full_name in seen:
        return False
    seen = seen | {desc.full_name}
    return any(
        f.type == FieldDescriptor.TYPE_MESSAGE and _carries(f.message_type, seen) for f in desc.fields
    )


def air_tensors(msg: Message) -> Iterator[air_pb2.AirTensor]:
    """Every ``AirTensor`` set inside ``msg`` (depth first; repeated and map fields included)."""
    if msg.DESCRIPTOR.full_name == AIR.full_name:
        yield msg
        return
    for field, value in msg.ListFields():
        if field.type != FieldDescriptor.TYPE_MESSAGE or not carries_air(field.message_type):
            continue
        if field.message_type.GetOptions().map_entry:
            values = [value[k] for k in value] if hasattr(value, "keys") else []
            for v in values:
                if isinstance(v, Message):
                    yield from air_tensors(v)
        elif field.is_repeated:
            for item in value:
                yield from air_tensors(item)
        else:
            yield from air_tensors(value)
