from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DirectionSettings(_message.Message):
    __slots__ = ("model", "snr_db")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SNR_DB_FIELD_NUMBER: _ClassVar[int]
    model: str
    snr_db: float
    def __init__(self, model: _Optional[str] = ..., snr_db: _Optional[float] = ...) -> None: ...

class ChannelSettings(_message.Message):
    __slots__ = ("uplink", "downlink")
    UPLINK_FIELD_NUMBER: _ClassVar[int]
    DOWNLINK_FIELD_NUMBER: _ClassVar[int]
    uplink: DirectionSettings
    downlink: DirectionSettings
    def __init__(self, uplink: _Optional[_Union[DirectionSettings, _Mapping]] = ..., downlink: _Optional[_Union[DirectionSettings, _Mapping]] = ...) -> None: ...

class GetChannelRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SetChannelRequest(_message.Message):
    __slots__ = ("uplink", "downlink")
    UPLINK_FIELD_NUMBER: _ClassVar[int]
    DOWNLINK_FIELD_NUMBER: _ClassVar[int]
    uplink: DirectionSettings
    downlink: DirectionSettings
    def __init__(self, uplink: _Optional[_Union[DirectionSettings, _Mapping]] = ..., downlink: _Optional[_Union[DirectionSettings, _Mapping]] = ...) -> None: ...

class GetStatsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DirectionStats(_message.Message):
    __slots__ = ("transmissions", "symbols", "payload_bytes", "message_bytes", "rpcs", "mean_snr_db", "energy")
    TRANSMISSIONS_FIELD_NUMBER: _ClassVar[int]
    SYMBOLS_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_BYTES_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    RPCS_FIELD_NUMBER: _ClassVar[int]
    MEAN_SNR_DB_FIELD_NUMBER: _ClassVar[int]
    ENERGY_FIELD_NUMBER: _ClassVar[int]
    transmissions: int
    symbols: int
    payload_bytes: int
    message_bytes: int
    rpcs: int
    mean_snr_db: float
    energy: float
    def __init__(self, transmissions: _Optional[int] = ..., symbols: _Optional[int] = ..., payload_bytes: _Optional[int] = ..., message_bytes: _Optional[int] = ..., rpcs: _Optional[int] = ..., mean_snr_db: _Optional[float] = ..., energy: _Optional[float] = ...) -> None: ...

class ChannelStats(_message.Message):
    __slots__ = ("uplink", "downlink")
    UPLINK_FIELD_NUMBER: _ClassVar[int]
    DOWNLINK_FIELD_NUMBER: _ClassVar[int]
    uplink: DirectionStats
    downlink: DirectionStats
    def __init__(self, uplink: _Optional[_Union[DirectionStats, _Mapping]] = ..., downlink: _Optional[_Union[DirectionStats, _Mapping]] = ...) -> None: ...
