from shared.pb import air_pb2 as _air_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ProbeRequest(_message.Message):
    __slots__ = ("tensors",)
    TENSORS_FIELD_NUMBER: _ClassVar[int]
    tensors: _containers.RepeatedCompositeFieldContainer[_air_pb2.AirTensor]
    def __init__(self, tensors: _Optional[_Iterable[_Union[_air_pb2.AirTensor, _Mapping]]] = ...) -> None: ...

class ProbeResponse(_message.Message):
    __slots__ = ("tensors",)
    TENSORS_FIELD_NUMBER: _ClassVar[int]
    tensors: _containers.RepeatedCompositeFieldContainer[_air_pb2.AirTensor]
    def __init__(self, tensors: _Optional[_Iterable[_Union[_air_pb2.AirTensor, _Mapping]]] = ...) -> None: ...

class GenerationParams(_message.Message):
    __slots__ = ("seed", "steps", "guidance", "fc", "strength")
    SEED_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    GUIDANCE_FIELD_NUMBER: _ClassVar[int]
    FC_FIELD_NUMBER: _ClassVar[int]
    STRENGTH_FIELD_NUMBER: _ClassVar[int]
    seed: int
    steps: int
    guidance: float
    fc: float
    strength: float
    def __init__(self, seed: _Optional[int] = ..., steps: _Optional[int] = ..., guidance: _Optional[float] = ..., fc: _Optional[float] = ..., strength: _Optional[float] = ...) -> None: ...

class SegmentRequest(_message.Message):
    __slots__ = ("protocol", "segment", "task", "params", "prompt", "tensors", "request_id", "share", "digital")
    class DigitalEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: bytes
        def __init__(self, key: _Optional[str] = ..., value: _Optional[bytes] = ...) -> None: ...
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    SEGMENT_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    TENSORS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    SHARE_FIELD_NUMBER: _ClassVar[int]
    DIGITAL_FIELD_NUMBER: _ClassVar[int]
    protocol: str
    segment: int
    task: str
    params: GenerationParams
    prompt: str
    tensors: _containers.RepeatedCompositeFieldContainer[_air_pb2.AirTensor]
    request_id: str
    share: Share
    digital: _containers.ScalarMap[str, bytes]
    def __init__(self, protocol: _Optional[str] = ..., segment: _Optional[int] = ..., task: _Optional[str] = ..., params: _Optional[_Union[GenerationParams, _Mapping]] = ..., prompt: _Optional[str] = ..., tensors: _Optional[_Iterable[_Union[_air_pb2.AirTensor, _Mapping]]] = ..., request_id: _Optional[str] = ..., share: _Optional[_Union[Share, _Mapping]] = ..., digital: _Optional[_Mapping[str, bytes]] = ...) -> None: ...

class Share(_message.Message):
    __slots__ = ("index", "count", "halo", "head", "sync")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    HALO_FIELD_NUMBER: _ClassVar[int]
    HEAD_FIELD_NUMBER: _ClassVar[int]
    SYNC_FIELD_NUMBER: _ClassVar[int]
    index: int
    count: int
    halo: int
    head: float
    sync: int
    def __init__(self, index: _Optional[int] = ..., count: _Optional[int] = ..., halo: _Optional[int] = ..., head: _Optional[float] = ..., sync: _Optional[int] = ...) -> None: ...

class SegmentResponse(_message.Message):
    __slots__ = ("tensors", "uplink_seen", "es_seconds", "digital")
    class DigitalEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: bytes
        def __init__(self, key: _Optional[str] = ..., value: _Optional[bytes] = ...) -> None: ...
    TENSORS_FIELD_NUMBER: _ClassVar[int]
    UPLINK_SEEN_FIELD_NUMBER: _ClassVar[int]
    ES_SECONDS_FIELD_NUMBER: _ClassVar[int]
    DIGITAL_FIELD_NUMBER: _ClassVar[int]
    tensors: _containers.RepeatedCompositeFieldContainer[_air_pb2.AirTensor]
    uplink_seen: _containers.RepeatedCompositeFieldContainer[_air_pb2.ChannelApplied]
    es_seconds: float
    digital: _containers.ScalarMap[str, bytes]
    def __init__(self, tensors: _Optional[_Iterable[_Union[_air_pb2.AirTensor, _Mapping]]] = ..., uplink_seen: _Optional[_Iterable[_Union[_air_pb2.ChannelApplied, _Mapping]]] = ..., es_seconds: _Optional[float] = ..., digital: _Optional[_Mapping[str, bytes]] = ...) -> None: ...

class DescribeRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DescribeResponse(_message.Message):
    __slots__ = ("model", "image_size", "latent_channels", "latent_size", "max_tokens", "embed_dim", "protocols", "device", "codec_fc")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    IMAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    LATENT_CHANNELS_FIELD_NUMBER: _ClassVar[int]
    LATENT_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    EMBED_DIM_FIELD_NUMBER: _ClassVar[int]
    PROTOCOLS_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    CODEC_FC_FIELD_NUMBER: _ClassVar[int]
    model: str
    image_size: int
    latent_channels: int
    latent_size: int
    max_tokens: int
    embed_dim: int
    protocols: _containers.RepeatedScalarFieldContainer[str]
    device: str
    codec_fc: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, model: _Optional[str] = ..., image_size: _Optional[int] = ..., latent_channels: _Optional[int] = ..., latent_size: _Optional[int] = ..., max_tokens: _Optional[int] = ..., embed_dim: _Optional[int] = ..., protocols: _Optional[_Iterable[str]] = ..., device: _Optional[str] = ..., codec_fc: _Optional[_Iterable[float]] = ...) -> None: ...
