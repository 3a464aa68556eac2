"""Mobility scenarios: timed events per link, read from a TOML file and played on a clock (pure Python).

A scenario file::

    step_s = 0.1                     # how often a path's SNR is updated (default 0.1 s)

    [[event]]                        # at 0 s, ue1's downlink takes a named profile of the proxy's book
    at_s = 0.0
    link = "ue1->es0"
    direction = "downlink"           # uplink | downlink | both (the default)
    profile = "tdl-a-30"

    [[event]]                        # the link's trace changes (file, start offset); its other settings stay
    at_s = 2.0
    link = "ue1->es0"
    trace = "traces/tdl-a-120.npz"
    trace_offset_s = 0.5

    [[event]]                        # a new mean SNR
    at_s = 3.0
    link = "ue1->es0"
    snr_db = 5.0

    [[event]]                        # SNR along a path: TR 38.901 path loss at a speed
    at_s = 4.0
    link = "ue1->es0"
    path = { from_m = 50, to_m = 400, speed_kmh = 30, scenario = "UMa-LOS", carrier_ghz = 3.5,
             snr_db = 25, ref_m = 50, offset_m = 0 }

    [[event]]                        # a handover: ue1's traffic goes to es1 from now on
    at_s = 10.0
    ue = "ue1"
    handover = "es1"

**Paths.** The UE moves on a straight road from ``from_m`` to ``to_m`` (metres along the road) at ``speed_kmh``;
the road passes the base station at ``offset_m`` (0: straight towards or away from it), so the 2-D distance is
``d(t) = sqrt(offset_m² + x(t)²)`` (at least 10 m, the tables' lower bound). The SNR is a link budget anchored at
the reference distance: ``SNR(d) = snr_db − (PL(d) − PL(ref_m))`` with ``PL`` from TR 38.901 Table 7.4.1-1
(:func:`path_loss_db`). A path becomes one SNR event every ``step_s`` until the UE reaches ``to_m``.

**Playing.** :class:`ScenarioPlayer` sleeps until each event's time on a clock (``shared.channel.scheduler``'s
:class:`~shared.channel.scheduler.MonotonicClock`, or its :class:`~shared.channel.scheduler.VirtualClock` in tests:
exact) and hands the event to a :class:`ScenarioTarget` (the proxy's link table). It records when each event
fired and can say where each link is in its scenario (:meth:`ScenarioPlayer.position`).
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from shared.channel.models import ChannelConfigError
from shared.channel.scheduler import MonotonicClock, VirtualClock

SPEED_OF_LIGHT = 299_792_458.0
#: Path-loss scenarios of TR 38.901 Table 7.4.1-1, with their default heights (BS, UT) in metres.
PATH_LOSS_SCENARIOS = {"UMa-LOS": (25.0, 1.5), "UMa-NLOS": (25.0, 1.5), "UMi-LOS": (10.0, 1.5),
                       "UMi-NLOS": (10.0, 1.5), "RMa-LOS": (35.0, 1.5), "RMa-NLOS": (35.0, 1.5)}
DIRECTIONS = ("uplink", "downlink", "both")
DEFAULT_STEP_S = 0.1
#: A scenario may not expand into more events than this (a path too long for its step).
MAX_EVENTS = 100_000


class ScenarioError(ChannelConfigError):
    """A scenario file is invalid; the message names the file, the event and the field."""


# --- TR 38.901 path loss ----------------------------------------------------------------------------------------


def path_loss_db(scenario: str, d2d_m: float, fc_ghz: float, h_bs: float | None = None,
                 h_ut: float | None = None) -> float:
    """TR 38.901 Table 7.4.1-1 path loss (dB) at 2-D distance ``d2d_m`` (clipped to ≥ 10 m), carrier ``fc_ghz``.

    UMa/UMi: LOS = PL1 up to the breakpoint ``d'BP = 4 h'BS h'UT fc / c`` (``h' = h − 1 m``), PL2 after; NLOS =
    max(LOS, PL'NLOS). RMa (average building height 5 m, street width 20 m): LOS = PL1 up to ``dBP = 2π hBS hUT fc
    / c``, PL2 after; NLOS = max(LOS, PL'NLOS). Shadow fading is not drawn (a path is the mean)."""
    if scenario not in PATH_LOSS_SCENARIOS:
        raise ScenarioError(f"path-loss scenario {scenario!r} is unknown; known: {', '.join(PATH_LOSS_SCENARIOS)}")
    hb0, hu0 = PATH_LOSS_SCENARIOS[scenario]
    hb, hu = (h_bs or hb0), (h_ut or hu0)
    d2 = max(float(d2d_m), 10.0)
    d3 = math.hypot(d2, hb - hu)
    fc = fc_ghz * 1e9
    lg = math.log10
    if scenario.startswith(("UMa", "UMi")):
        dbp = 4 * (hb - 1.0) * (hu - 1.0) * fc / SPEED_OF_LIGHT
        if scenario.startswith("UMa"):
            pl1 = 28.0 + 22 * lg(d3) + 20 * lg(fc_ghz)
            pl2 = 28.0 + 40 * lg(d3) + 20 * lg(fc_ghz) - 9 * lg(dbp**2 + (hb - hu) ** 2)
            nlos = 13.54 + 39.08 * lg(d3) + 20 * lg(fc_ghz) - 0.6 * (hu - 1.5)
        else:
            pl1 = 32.4 + 21 * lg(d3) + 20 * lg(fc_ghz)
            pl2 = 32.4 + 40 * lg(d3) + 20 * lg(fc_ghz) - 9.5 * lg(dbp**2 + (hb - hu) ** 2)
            nlos = 22.4 + 35.3 * lg(d3) + 21.3 * lg(fc_ghz) - 0.3 * (hu - 1.5)
        los = pl1 if d2 <= dbp else pl2
    else:
        h, w = 5.0, 20.0
        dbp = 2 * math.pi * hb * hu * fc / SPEED_OF_LIGHT

        def rma1(d: float) -> float:
            return (20 * lg(40 * math.pi * d * fc_ghz / 3) + min(0.03 * h**1.72, 10) * lg(d)
                    - min(0.044 * h**1.72, 14.77) + 0.002 * lg(h) * d)

        los = rma1(d3) if d2 <= dbp else rma1(math.hypot(dbp, hb - hu)) + 40 * lg(d3 / dbp)
        nlos = (161.04 - 7.1 * lg(w) + 7.5 * lg(h) - (24.37 - 3.7 * (h / hb) ** 2) * lg(hb)
                + (43.42 - 3.1 * lg(hb)) * (lg(d3) - 3) + 20 * lg(fc_ghz) - (3.2 * lg(11.75 * hu) ** 2 - 4.97))
    return max(los, nlos) if scenario.endswith("NLOS") else los


@dataclass(frozen=True)
class Road:
    """A straight road: from ``from_m`` to ``to_m`` at ``speed_kmh``, passing the BS at ``offset_m``."""

    from_m: float
    to_m: float
    speed_kmh: float
    scenario: str = "UMa-LOS"
    carrier_ghz: float = 3.5
    snr_db: float = 20.0
    ref_m: float = 100.0
    offset_m: float = 0.0
    h_bs: float | None = None
    h_ut: float | None = None

    @property
    def seconds(self) -> float:
        """How long the UE takes from ``from_m`` to ``to_m``."""
        return abs(self.to_m - self.from_m) / (self.speed_kmh / 3.6)

    def x_at(self, t: float) -> float:
        """Position along the road ``t`` seconds after the path began (stops at ``to_m``)."""
        sign = 1.0 if self.to_m >= self.from_m else -1.0
        return self.from_m + sign * min(t, self.seconds) * self.speed_kmh / 3.6

    def distance_at(self, t: float) -> float:
        return math.hypot(self.offset_m, self.x_at(t))

    def snr_at(self, t: float) -> float:
        """``snr_db − (PL(d(t)) − PL(ref_m))``."""
        pl = path_loss_db(self.scenario, self.distance_at(t), self.carrier_ghz, self.h_bs, self.h_ut)
        ref = path_loss_db(self.scenario, self.ref_m, self.carrier_ghz, self.h_bs, self.h_ut)
        return self.snr_db - (pl - ref)


# --- events ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Event:
    """One timed change. ``kind``: ``profile`` (``value`` = a profile name), ``trace`` (``value`` = a file, with
    ``offset_s``), ``snr`` (``value`` = dB), ``handover`` (``ue`` moves to ES ``value``). ``index``: the event of the
    file it came from (a path's SNR steps share one); ``distance_m``: where on its path, for a path step."""

    at_s: float
    kind: str
    link: str
    direction: str
    value: Any
    index: int
    offset_s: float = 0.0
    distance_m: float | None = None
    ue: str = ""

    def describe(self) -> str:
        if self.kind == "handover":
            return f"handover of {self.ue} to {self.value}"
        if self.kind == "snr":
            what = f"SNR {float(self.value):.2f} dB"
        elif self.kind == "trace":
            what = f"trace {self.value} from {self.offset_s:g} s"
        else:
            what = f"profile {self.value}"
        where = f" at {self.distance_m:.0f} m" if self.distance_m is not None else ""
        return f"{self.link} {self.direction}: {what}{where}"


@dataclass(frozen=True)
class Scenario:
    """Events in time order (paths expanded), and the file they came from."""

    events: tuple[Event, ...]
    path: str = ""
    step_s: float = DEFAULT_STEP_S

    @property
    def duration_s(self) -> float:
        return self.events[-1].at_s if self.events else 0.0

    @property
    def links(self) -> list[str]:
        return sorted({e.link for e in self.events if e.link})


_EVENT_KEYS = {"at_s", "link", "direction", "profile", "trace", "trace_offset_s", "snr_db", "path", "ue", "handover"}
_ACTIONS = ("profile", "trace", "snr_db", "path", "handover")
_PATH_KEYS = {"from_m", "to_m", "speed_kmh", "scenario", "carrier_ghz", "snr_db", "ref_m", "offset_m", "h_bs", "h_ut"}


def _number(where: str, key: str, v: object, lo: float | None = None, positive: bool = False) -> float:
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
        raise ScenarioError(f"{where}.{key} must be a finite number, got {v!r}")
    if positive and not v > 0:
        raise ScenarioError(f"{where}.{key} must be > 0, got {v!r}")
    if lo is not None and v < lo:
        raise ScenarioError(f"{where}.{key} must be >= {lo:g}, got {v!r}")
    return float(v)


def _name(where: str, key: str, v: object) -> str:
    if not isinstance(v, str) or not v:
        raise ScenarioError(f"{where}.{key} must be a non-empty string, got {v!r}")
    return v


def parse_scenario(raw: Mapping[str, Any], where: str = "scenario", base: Path | None = None,
                   traces: Callable[[str, str], str] | None = None) -> Scenario:
    """A scenario from a parsed TOML mapping; relative trace files are resolved against ``base``, or every trace
    name by ``traces(name, field)`` when given (the proxy's :class:`channel_emulator.trace_access.TraceAccess`: it
    raises ChannelConfigError for a file a caller may not name). Raises ScenarioError naming ``where``, the event
    (``event[i]``) and the field."""
    unknown = set(raw) - {"step_s", "event"}
    if unknown:
        raise ScenarioError(f"{where}: unknown keys {sorted(unknown)}; a scenario has step_s and [[event]] tables")
    step = _number(where, "step_s", raw.get("step_s", DEFAULT_STEP_S), positive=True)
    items = raw.get("event", [])
    if not isinstance(items, list) or not all(isinstance(e, dict) for e in items):
        raise ScenarioError(f"{where}: event must be an array of tables ([[event]])")
    events: list[Event] = []
    for i, e in enumerate(items):
        w = f"{where}: event[{i}]"
        bad = set(e) - _EVENT_KEYS
        if bad:
            raise ScenarioError(f"{w}: unknown keys {sorted(bad)}; known: {sorted(_EVENT_KEYS)}")
        actions = [a for a in _ACTIONS if a in e]
        if len(actions) != 1:
            raise ScenarioError(f"{w}: give exactly one of {', '.join(_ACTIONS)} (got {actions or 'none'})")
        at = _number(w, "at_s", e.get("at_s"), lo=0.0)
        action = actions[0]
        if action == "handover":
            if "link" in e or "direction" in e:
                raise ScenarioError(f"{w}: a handover names the ue (ue = \"ue1\"), not a link or direction")
            events.append(Event(at, "handover", "", "both", _name(w, "handover", e["handover"]), i,
                                ue=_name(w, "ue", e.get("ue"))))
            continue
        if "ue" in e:
            raise ScenarioError(f"{w}: ue is for a handover; a {action} event names its link (link = \"ue1->es0\")")
        link = _name(w, "link", e.get("link"))
        ue, arrow, es = link.partition("->")
        if not arrow or not ue or not es or "->" in es:
            raise ScenarioError(f"{w}.link {link!r} is not UE->ES")
        direction = e.get("direction", "both")
        if direction not in DIRECTIONS:
            raise ScenarioError(f"{w}.direction must be uplink, downlink or both, got {direction!r}")
        if "trace_offset_s" in e and action != "trace":
            raise ScenarioError(f"{w}: trace_offset_s goes with trace")
        if action == "profile":
            events.append(Event(at, "profile", link, direction, _name(w, "profile", e["profile"]), i))
        elif action == "trace":
            name = _name(w, "trace", e["trace"])
            if traces is not None:
                try:
                    file = traces(name, f"event[{i}].trace")
                except ChannelConfigError as exc:
                    raise ScenarioError(f"{where}: {exc}") from None
            else:
                file = str(base / name) if base is not None and not Path(name).is_absolute() else name
            offset = _number(w, "trace_offset_s", e.get("trace_offset_s", 0.0), lo=0.0)
            events.append(Event(at, "trace", link, direction, file, i, offset_s=offset))
        elif action == "snr_db":
            events.append(Event(at, "snr", link, direction, _number(w, "snr_db", e["snr_db"]), i))
        else:
            p = e["path"]
            if not isinstance(p, dict):
                raise ScenarioError(f"{w}.path must be a table (path = {{ from_m = ..., to_m = ..., speed_kmh = ... }})")
            bad = set(p) - _PATH_KEYS
            if bad:
                raise ScenarioError(f"{w}.path: unknown keys {sorted(bad)}; known: {sorted(_PATH_KEYS)}")
            pw = f"{w}.path"
            for key in ("from_m", "to_m", "speed_kmh"):
                if key not in p:
                    raise ScenarioError(f"{pw}.{key} is missing")
            kw: dict[str, Any] = {k: _number(pw, k, p[k]) for k in ("from_m", "to_m", "offset_m") if k in p}
            kw["speed_kmh"] = _number(pw, "speed_kmh", p["speed_kmh"], positive=True)
            for k in ("carrier_ghz", "ref_m", "h_bs", "h_ut"):
                if k in p:
                    kw[k] = _number(pw, k, p[k], positive=True)
            if "snr_db" in p:
                kw["snr_db"] = _number(pw, "snr_db", p["snr_db"])
            if "scenario" in p:
                if p["scenario"] not in PATH_LOSS_SCENARIOS:
                    raise ScenarioError(f"{pw}.scenario {p['scenario']!r} is unknown; known: "
                                        f"{', '.join(PATH_LOSS_SCENARIOS)}")
                kw["scenario"] = p["scenario"]
            road = Road(**kw)
            steps = math.floor(road.seconds / step + 1e-9)
            if len(events) + steps > MAX_EVENTS:
                raise ScenarioError(f"{pw}: {road.seconds:g} s in steps of {step:g} s is more than {MAX_EVENTS} events")
            times = [k * step for k in range(steps + 1)]
            if times[-1] < road.seconds - 1e-9:
                times.append(road.seconds)
            for t in times:
                events.append(Event(at + t, "snr", link, direction, road.snr_at(t), i,
                                    distance_m=road.distance_at(t)))
    events.sort(key=lambda ev: (ev.at_s, ev.index))
    return Scenario(tuple(events), where, step)


def parse_scenario_text(text: str, where: str, traces: Callable[[str, str], str] | None = None) -> Scenario:
    """A scenario from a file's text (``StartScenario``: the file travels in the request); as :func:`parse_scenario`,
    with TOML syntax errors raised as ScenarioError naming ``where``."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{where}: {exc}") from None
    return parse_scenario(raw, where, None, traces)


def load_scenario(path: str | Path) -> Scenario:
    """Read a scenario TOML file (trace files relative to it); raises ScenarioError naming the file."""
    try:
        raw = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ScenarioError(f"{path}: {exc}") from None
    return parse_scenario(raw, str(path), Path(path).parent)


# --- playing ----------------------------------------------------------------------------------------------------


class ScenarioTarget(Protocol):
    """What a scenario acts on (the proxy's link table); each method raises ChannelConfigError for a bad value."""

    def scenario_profile(self, link: str, direction: str, profile: str) -> None: ...
    def scenario_trace(self, link: str, direction: str, trace: str, offset_s: float) -> None: ...
    def scenario_snr(self, link: str, direction: str, snr_db: float) -> None: ...
    def scenario_handover(self, ue: str, es: str) -> None: ...


@dataclass
class Fired:
    """An event and when it fired (on the player's clock, from the scenario's start), or why it failed."""

    event: Event
    at_s: float
    error: str = ""


@dataclass
class ScenarioPlayer:
    """Plays a :class:`Scenario` on ``target`` from ``start`` (the clock's now when :meth:`run` begins)."""

    scenario: Scenario
    target: ScenarioTarget
    clock: MonotonicClock | VirtualClock = field(default_factory=MonotonicClock)
    fired: list[Fired] = field(default_factory=list)
    start: float | None = None
    #: when play ended (the last event fired, or stopped), on the clock; None while playing
    end: float | None = None
    _by_key: dict[str, list[Event]] | None = field(default=None, init=False, repr=False)

    def apply(self, e: Event) -> None:
        if e.kind == "profile":
            self.target.scenario_profile(e.link, e.direction, str(e.value))
        elif e.kind == "trace":
            self.target.scenario_trace(e.link, e.direction, str(e.value), e.offset_s)
        elif e.kind == "snr":
            self.target.scenario_snr(e.link, e.direction, float(e.value))
        else:
            self.target.scenario_handover(e.ue, str(e.value))

    async def run(self) -> list[Fired]:
        """Fire every event at its time; an event the target refuses is recorded (``error``) and play goes on."""
        self.start = self.clock.now() if self.start is None else self.start
        for e in self.scenario.events[len(self.fired):]:
            await self.clock.sleep_until(self.start + e.at_s)
            try:
                self.apply(e)
                error = ""
            except ChannelConfigError as exc:
                error = str(exc)
            self.fired.append(Fired(e, self.clock.now() - self.start, error))
        self.end = self.clock.now()
        return self.fired

    @property
    def done(self) -> bool:
        return len(self.fired) == len(self.scenario.events)

    def elapsed(self) -> float:
        """Seconds since the start on the player's clock (frozen at :attr:`end` once finished or stopped)."""
        if self.start is None:
            return 0.0
        return (self.end if self.end is not None else self.clock.now()) - self.start

    def positions(self) -> list[LinkPosition]:
        """Where each link (and each handed-over UE) is in the scenario, by name."""
        if self._by_key is None:
            by_key: dict[str, list[Event]] = {}
            for e in self.scenario.events:
                by_key.setdefault(e.link or e.ue, []).append(e)
            self._by_key = by_key
        last: dict[str, Fired] = {}
        count: dict[str, int] = {}
        for f in self.fired:
            key = f.event.link or f.event.ue
            last[key] = f
            count[key] = count.get(key, 0) + 1
        out = []
        for key, mine in sorted(self._by_key.items()):
            n = count.get(key, 0)
            out.append(LinkPosition(key, last.get(key), mine[n] if n < len(mine) else None))
        return out

    def position(self) -> dict[str, str]:
        """Where each link (and each handed-over UE) is in the scenario, in words: its last fired event, and the next."""
        elapsed = self.elapsed()
        return {p.key: f"t={elapsed:.2f} s; {p.describe()}" for p in self.positions()}


@dataclass(frozen=True)
class LinkPosition:
    """One link (or handed-over UE) in a scenario: the last event fired on it (None: none yet), the next (None: done)."""

    key: str
    last: Fired | None
    next: Event | None

    @property
    def path(self) -> tuple[float, float] | None:
        """``(SNR dB, distance m)`` the last event set if it was a step of a path, else None."""
        if self.last is None or self.last.event.distance_m is None:
            return None
        return float(self.last.event.value), self.last.event.distance_m

    def describe(self) -> str:
        last = self.last
        parts = [f"last: {last.event.describe()} at {last.at_s:.2f} s" + (f" (refused: {last.error})" if last.error
                                                                           else "") if last else "not started"]
        parts.append(f"next: {self.next.describe()} at {self.next.at_s:.2f} s" if self.next else "done")
        return "; ".join(parts)
