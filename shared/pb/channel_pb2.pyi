from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CellSettings(_message.Message):
    __slots__ = ("cell", "bandwidth_mhz", "numerology", "overhead", "duplex", "tdd_pattern", "scheduler", "delay_ms", "jitter_ms", "jitter", "queue_limit", "prbs", "re_per_slot")
    CELL_FIELD_NUMBER: _ClassVar[int]
    BANDWIDTH_MHZ_FIELD_NUMBER: _ClassVar[int]
    NUMEROLOGY_FIELD_NUMBER: _ClassVar[int]
    OVERHEAD_FIELD_NUMBER: _ClassVar[int]
    DUPLEX_FIELD_NUMBER: _ClassVar[int]
    TDD_PATTERN_FIELD_NUMBER: _ClassVar[int]
    SCHEDULER_FIELD_NUMBER: _ClassVar[int]
    DELAY_MS_FIELD_NUMBER: _ClassVar[int]
    JITTER_MS_FIELD_NUMBER: _ClassVar[int]
    JITTER_FIELD_NUMBER: _ClassVar[int]
    QUEUE_LIMIT_FIELD_NUMBER: _ClassVar[int]
    PRBS_FIELD_NUMBER: _ClassVar[int]
    RE_PER_SLOT_FIELD_NUMBER: _ClassVar[int]
    cell: str
    bandwidth_mhz: float
    numerology: int
    overhead: float
    duplex: str
    tdd_pattern: str
    scheduler: str
    delay_ms: float
    jitter_ms: float
    jitter: str
    queue_limit: int
    prbs: int
    re_per_slot: int
    def __init__(self, cell: _Optional[str] = ..., bandwidth_mhz: _Optional[float] = ..., numerology: _Optional[int] = ..., overhead: _Optional[float] = ..., duplex: _Optional[str] = ..., tdd_pattern: _Optional[str] = ..., scheduler: _Optional[str] = ..., delay_ms: _Optional[float] = ..., jitter_ms: _Optional[float] = ..., jitter: _Optional[str] = ..., queue_limit: _Optional[int] = ..., prbs: _Optional[int] = ..., re_per_slot: _Optional[int] = ...) -> None: ...

class SetCellRequest(_message.Message):
    __slots__ = ("cell",)
    CELL_FIELD_NUMBER: _ClassVar[int]
    cell: CellSettings
    def __init__(self, cell: _Optional[_Union[CellSettings, _Mapping]] = ...) -> None: ...

class CellStats(_message.Message):
    __slots__ = ("cell", "direction", "utilisation", "backlog_resource_elements", "backlog_messages", "delivered_bits_per_s", "resource_elements", "messages", "active_links")
    CELL_FIELD_NUMBER: _ClassVar[int]
    DIRECTION_FIELD_NUMBER: _ClassVar[int]
    UTILISATION_FIELD_NUMBER: _ClassVar[int]
    BACKLOG_RESOURCE_ELEMENTS_FIELD_NUMBER: _ClassVar[int]
    BACKLOG_MESSAGES_FIELD_NUMBER: _ClassVar[int]
    DELIVERED_BITS_PER_S_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_ELEMENTS_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_LINKS_FIELD_NUMBER: _ClassVar[int]
    cell: str
    direction: str
    utilisation: float
    backlog_resource_elements: int
    backlog_messages: int
    delivered_bits_per_s: float
    resource_elements: int
    messages: int
    active_links: int
    def __init__(self, cell: _Optional[str] = ..., direction: _Optional[str] = ..., utilisation: _Optional[float] = ..., backlog_resource_elements: _Optional[int] = ..., backlog_messages: _Optional[int] = ..., delivered_bits_per_s: _Optional[float] = ..., resource_elements: _Optional[int] = ..., messages: _Optional[int] = ..., active_links: _Optional[int] = ...) -> None: ...

class Profile(_message.Message):
    __slots__ = ("name", "model", "snr_db", "coherence_symbols", "k_factor", "csi_error", "trace", "trace_offset_s", "trace_gain_db")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SNR_DB_FIELD_NUMBER: _ClassVar[int]
    COHERENCE_SYMBOLS_FIELD_NUMBER: _ClassVar[int]
    K_FACTOR_FIELD_NUMBER: _ClassVar[int]
    CSI_ERROR_FIELD_NUMBER: _ClassVar[int]
    TRACE_FIELD_NUMBER: _ClassVar[int]
    TRACE_OFFSET_S_FIELD_NUMBER: _ClassVar[int]
    TRACE_GAIN_DB_FIELD_NUMBER: _ClassVar[int]
    name: str
    model: str
    snr_db: float
    coherence_symbols: int
    k_factor: float
    csi_error: float
    trace: str
    trace_offset_s: float
    trace_gain_db: float
    def __init__(self, name: _Optional[str] = ..., model: _Optional[str] = ..., snr_db: _Optional[float] = ..., coherence_symbols: _Optional[int] = ..., k_factor: _Optional[float] = ..., csi_error: _Optional[float] = ..., trace: _Optional[str] = ..., trace_offset_s: _Optional[float] = ..., trace_gain_db: _Optional[float] = ...) -> None: ...

class ListProfilesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ProfileList(_message.Message):
    __slots__ = ("profiles",)
    PROFILES_FIELD_NUMBER: _ClassVar[int]
    profiles: _containers.RepeatedCompositeFieldContainer[Profile]
    def __init__(self, profiles: _Optional[_Iterable[_Union[Profile, _Mapping]]] = ...) -> None: ...

class LinkSettings(_message.Message):
    __slots__ = ("link", "uplink", "downlink")
    LINK_FIELD_NUMBER: _ClassVar[int]
    UPLINK_FIELD_NUMBER: _ClassVar[int]
    DOWNLINK_FIELD_NUMBER: _ClassVar[int]
    link: str
    uplink: Profile
    downlink: Profile
    def __init__(self, link: _Optional[str] = ..., uplink: _Optional[_Union[Profile, _Mapping]] = ..., downlink: _Optional[_Union[Profile, _Mapping]] = ...) -> None: ...

class GetChannelRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ChannelSettings(_message.Message):
    __slots__ = ("default", "links", "upstreams", "cells", "clock", "scenarios")
    DEFAULT_FIELD_NUMBER: _ClassVar[int]
    LINKS_FIELD_NUMBER: _ClassVar[int]
    UPSTREAMS_FIELD_NUMBER: _ClassVar[int]
    CELLS_FIELD_NUMBER: _ClassVar[int]
    CLOCK_FIELD_NUMBER: _ClassVar[int]
    SCENARIOS_FIELD_NUMBER: _ClassVar[int]
    default: LinkSettings
    links: _containers.RepeatedCompositeFieldContainer[LinkSettings]
    upstreams: _containers.RepeatedScalarFieldContainer[str]
    cells: _containers.RepeatedCompositeFieldContainer[CellSettings]
    clock: str
    scenarios: _containers.RepeatedCompositeFieldContainer[ScenarioStatus]
    def __init__(self, default: _Optional[_Union[LinkSettings, _Mapping]] = ..., links: _Optional[_Iterable[_Union[LinkSettings, _Mapping]]] = ..., upstreams: _Optional[_Iterable[str]] = ..., cells: _Optional[_Iterable[_Union[CellSettings, _Mapping]]] = ..., clock: _Optional[str] = ..., scenarios: _Optional[_Iterable[_Union[ScenarioStatus, _Mapping]]] = ...) -> None: ...

class ScenarioPosition(_message.Message):
    __slots__ = ("link", "last_event", "last", "last_at_s", "last_error", "next_event", "next", "next_at_s", "snr_db", "distance_m")
    LINK_FIELD_NUMBER: _ClassVar[int]
    LAST_EVENT_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    LAST_AT_S_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    NEXT_EVENT_FIELD_NUMBER: _ClassVar[int]
    NEXT_FIELD_NUMBER: _ClassVar[int]
    NEXT_AT_S_FIELD_NUMBER: _ClassVar[int]
    SNR_DB_FIELD_NUMBER: _ClassVar[int]
    DISTANCE_M_FIELD_NUMBER: _ClassVar[int]
    link: str
    last_event: int
    last: str
    last_at_s: float
    last_error: str
    next_event: int
    next: str
    next_at_s: float
    snr_db: float
    distance_m: float
    def __init__(self, link: _Optional[str] = ..., last_event: _Optional[int] = ..., last: _Optional[str] = ..., last_at_s: _Optional[float] = ..., last_error: _Optional[str] = ..., next_event: _Optional[int] = ..., next: _Optional[str] = ..., next_at_s: _Optional[float] = ..., snr_db: _Optional[float] = ..., distance_m: _Optional[float] = ...) -> None: ...

class ScenarioStatus(_message.Message):
    __slots__ = ("name", "source", "state", "elapsed_s", "duration_s", "events", "fired", "positions")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ELAPSED_S_FIELD_NUMBER: _ClassVar[int]
    DURATION_S_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    FIRED_FIELD_NUMBER: _ClassVar[int]
    POSITIONS_FIELD_NUMBER: _ClassVar[int]
    name: str
    source: str
    state: str
    elapsed_s: float
    duration_s: float
    events: int
    fired: int
    positions: _containers.RepeatedCompositeFieldContainer[ScenarioPosition]
    def __init__(self, name: _Optional[str] = ..., source: _Optional[str] = ..., state: _Optional[str] = ..., elapsed_s: _Optional[float] = ..., duration_s: _Optional[float] = ..., events: _Optional[int] = ..., fired: _Optional[int] = ..., positions: _Optional[_Iterable[_Union[ScenarioPosition, _Mapping]]] = ...) -> None: ...

class StartScenarioRequest(_message.Message):
    __slots__ = ("name", "toml", "replace")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TOML_FIELD_NUMBER: _ClassVar[int]
    REPLACE_FIELD_NUMBER: _ClassVar[int]
    name: str
    toml: str
    replace: bool
    def __init__(self, name: _Optional[str] = ..., toml: _Optional[str] = ..., replace: _Optional[bool] = ...) -> None: ...

class StopScenarioRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class SetChannelRequest(_message.Message):
    __slots__ = ("link", "direction", "profile", "custom")
    LINK_FIELD_NUMBER: _ClassVar[int]
    DIRECTION_FIELD_NUMBER: _ClassVar[int]
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    CUSTOM_FIELD_NUMBER: _ClassVar[int]
    link: str
    direction: str
    profile: str
    custom: Profile
    def __init__(self, link: _Optional[str] = ..., direction: _Optional[str] = ..., profile: _Optional[str] = ..., custom: _Optional[_Union[Profile, _Mapping]] = ...) -> None: ...

class ResetChannelRequest(_message.Message):
    __slots__ = ("stats",)
    STATS_FIELD_NUMBER: _ClassVar[int]
    stats: bool
    def __init__(self, stats: _Optional[bool] = ...) -> None: ...

class GetStatsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DirectionStats(_message.Message):
    __slots__ = ("link", "direction", "rpcs", "transmissions", "symbols", "payload_bytes", "message_bytes", "mean_snr_db", "energy", "allocated")
    LINK_FIELD_NUMBER: _ClassVar[int]
    DIRECTION_FIELD_NUMBER: _ClassVar[int]
    RPCS_FIELD_NUMBER: _ClassVar[int]
    TRANSMISSIONS_FIELD_NUMBER: _ClassVar[int]
    SYMBOLS_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_BYTES_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    MEAN_SNR_DB_FIELD_NUMBER: _ClassVar[int]
    ENERGY_FIELD_NUMBER: _ClassVar[int]
    ALLOCATED_FIELD_NUMBER: _ClassVar[int]
    link: str
    direction: str
    rpcs: int
    transmissions: int
    symbols: int
    payload_bytes: int
    message_bytes: int
    mean_snr_db: float
    energy: float
    allocated: int
    def __init__(self, link: _Optional[str] = ..., direction: _Optional[str] = ..., rpcs: _Optional[int] = ..., transmissions: _Optional[int] = ..., symbols: _Optional[int] = ..., payload_bytes: _Optional[int] = ..., message_bytes: _Optional[int] = ..., mean_snr_db: _Optional[float] = ..., energy: _Optional[float] = ..., allocated: _Optional[int] = ...) -> None: ...

class ChannelStats(_message.Message):
    __slots__ = ("entries", "cells")
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    CELLS_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[DirectionStats]
    cells: _containers.RepeatedCompositeFieldContainer[CellStats]
    def __init__(self, entries: _Optional[_Iterable[_Union[DirectionStats, _Mapping]]] = ..., cells: _Optional[_Iterable[_Union[CellStats, _Mapping]]] = ...) -> None: ...

class CSIRequest(_message.Message):
    __slots__ = ("link", "direction", "blocks", "symbols")
    LINK_FIELD_NUMBER: _ClassVar[int]
    DIRECTION_FIELD_NUMBER: _ClassVar[int]
    BLOCKS_FIELD_NUMBER: _ClassVar[int]
    SYMBOLS_FIELD_NUMBER: _ClassVar[int]
    link: str
    direction: str
    blocks: int
    symbols: int
    def __init__(self, link: _Optional[str] = ..., direction: _Optional[str] = ..., blocks: _Optional[int] = ..., symbols: _Optional[int] = ...) -> None: ...

class CSIResponse(_message.Message):
    __slots__ = ("gains", "coherence_symbols", "snr_db", "model")
    GAINS_FIELD_NUMBER: _ClassVar[int]
    COHERENCE_SYMBOLS_FIELD_NUMBER: _ClassVar[int]
    SNR_DB_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    gains: _containers.RepeatedScalarFieldContainer[float]
    coherence_symbols: int
    snr_db: float
    model: str
    def __init__(self, gains: _Optional[_Iterable[float]] = ..., coherence_symbols: _Optional[int] = ..., snr_db: _Optional[float] = ..., model: _Optional[str] = ...) -> None: ...
