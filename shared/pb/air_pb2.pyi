from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ChannelApplied(_message.Message):
    __slots__ = ("link", "direction", "model", "snr_db", "profile", "effective_snr_db", "blocks", "symbols", "payload_bytes", "energy", "noise_seed", "air_s", "queue_s", "slots", "resource_elements", "mcs")
    LINK_FIELD_NUMBER: _ClassVar[int]
    DIRECTION_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SNR_DB_FIELD_NUMBER: _ClassVar[int]
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    EFFECTIVE_SNR_DB_FIELD_NUMBER: _ClassVar[int]
    BLOCKS_FIELD_NUMBER: _ClassVar[int]
    SYMBOLS_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_BYTES_FIELD_NUMBER: _ClassVar[int]
    ENERGY_FIELD_NUMBER: _ClassVar[int]
    NOISE_SEED_FIELD_NUMBER: _ClassVar[int]
    AIR_S_FIELD_NUMBER: _ClassVar[int]
    QUEUE_S_FIELD_NUMBER: _ClassVar[int]
    SLOTS_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_ELEMENTS_FIELD_NUMBER: _ClassVar[int]
    MCS_FIELD_NUMBER: _ClassVar[int]
    link: str
    direction: str
    model: str
    snr_db: float
    profile: str
    effective_snr_db: float
    blocks: int
    symbols: int
    payload_bytes: int
    energy: float
    noise_seed: int
    air_s: float
    queue_s: float
    slots: int
    resource_elements: int
    mcs: int
    def __init__(self, link: _Optional[str] = ..., direction: _Optional[str] = ..., model: _Optional[str] = ..., snr_db: _Optional[float] = ..., profile: _Optional[str] = ..., effective_snr_db: _Optional[float] = ..., blocks: _Optional[int] = ..., symbols: _Optional[int] = ..., payload_bytes: _Optional[int] = ..., energy: _Optional[float] = ..., noise_seed: _Optional[int] = ..., air_s: _Optional[float] = ..., queue_s: _Optional[float] = ..., slots: _Optional[int] = ..., resource_elements: _Optional[int] = ..., mcs: _Optional[int] = ...) -> None: ...

class AirTensor(_message.Message):
    __slots__ = ("name", "shape", "dtype", "data", "transmission_id", "block_power", "block_length", "applied")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    TRANSMISSION_ID_FIELD_NUMBER: _ClassVar[int]
    BLOCK_POWER_FIELD_NUMBER: _ClassVar[int]
    BLOCK_LENGTH_FIELD_NUMBER: _ClassVar[int]
    APPLIED_FIELD_NUMBER: _ClassVar[int]
    name: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    dtype: str
    data: bytes
    transmission_id: str
    block_power: _containers.RepeatedScalarFieldContainer[float]
    block_length: int
    applied: ChannelApplied
    def __init__(self, name: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., dtype: _Optional[str] = ..., data: _Optional[bytes] = ..., transmission_id: _Optional[str] = ..., block_power: _Optional[_Iterable[float]] = ..., block_length: _Optional[int] = ..., applied: _Optional[_Union[ChannelApplied, _Mapping]] = ...) -> None: ...
