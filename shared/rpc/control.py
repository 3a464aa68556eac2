"""The one client of the channel proxy's ``ChannelControl`` service (toxiproxy keeps one ``client/`` package
for its control API; this is ours).

:class:`ControlClient` (synchronous: the CLIs, ``meg-ue``) and :class:`AsyncControlClient` (asyncio: the ES's
power controller) wrap :class:`shared.pb.channel_pb2_grpc.ChannelControlStub`: every call has a deadline,
TLS and the bearer token come from :func:`shared.rpc.security.secure_channel` / :func:`aio_channel`. Which
token: the proxy's *admin* token for everything; its *UE* token is enough for :meth:`ControlClient.get_channel`
(the multi-ES discovery of the upstream names, read-only).

Errors are the stub's ``grpc.RpcError`` as they come (the CLIs describe them in one line)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Self

import grpc

from shared.pb import channel_pb2, channel_pb2_grpc
from shared.rpc.security import TlsFiles, aio_channel, secure_channel
from shared.wire.headers import AUTH_HEADER

#: Deadline of one control call, seconds (the proxy answers them from memory).
CONTROL_DEADLINE_S = 10.0

#: ``(uplink, downlink)`` profiles of one link.
LinkProfiles = tuple[channel_pb2.Profile, channel_pb2.Profile]


def set_request(link: str = "", direction: str = "both", *, profile: str | None = None,
                custom: channel_pb2.Profile | None = None) -> channel_pb2.SetChannelRequest:
    """A ``SetChannel`` request: one ``link`` (``""``: every link and the default), ``direction``
    (``uplink`` | ``downlink`` | ``both``), a named ``profile`` or a ``custom`` one (exactly one)."""
    if (profile is None) == (custom is None):
        raise ValueError("give a named profile or a custom one (exactly one)")
    req = channel_pb2.SetChannelRequest(link=link, direction=direction)
    if profile is not None:
        req.profile = profile
    else:
        req.custom.CopyFrom(custom)
    return req


def link_profiles(settings: channel_pb2.ChannelSettings, links: Sequence[str]) -> dict[str, LinkProfiles]:
    """``(uplink, downlink)`` of each of ``links`` in ``settings`` (a link the proxy has not seen: the default)."""
    known = {ls.link: ls for ls in settings.links}
    return {link: (known.get(link, settings.default).uplink, known.get(link, settings.default).downlink)
            for link in links}


class ControlClient:
    """A synchronous connection to one proxy's control service (use as a context manager, or :meth:`close`)."""

    def __init__(self, target: str, tls: TlsFiles | None = None, token: str | None = None,
                 timeout_s: float = CONTROL_DEADLINE_S) -> None:
        """``target``: the proxy's ``HOST:PORT``; ``tls``: (m)TLS files; ``token``: the admin token (or the UE
        token, for :meth:`get_channel` only); ``timeout_s``: the deadline of every call."""
        self.target, self.timeout_s = target, timeout_s
        self._channel = secure_channel(target, tls, token)
        self._stub = channel_pb2_grpc.ChannelControlStub(self._channel)

    def list_profiles(self) -> channel_pb2.ProfileList:
        return self._stub.ListProfiles(channel_pb2.ListProfilesRequest(), timeout=self.timeout_s)

    def get_channel(self) -> channel_pb2.ChannelSettings:
        """The default, every link's settings and the upstream ES names."""
        return self._stub.GetChannel(channel_pb2.GetChannelRequest(), timeout=self.timeout_s)

    def upstreams(self) -> list[str]:
        """The edge servers behind the proxy, by name."""
        return list(self.get_channel().upstreams)

    def links(self, links: Sequence[str]) -> dict[str, LinkProfiles]:
        """``(uplink, downlink)`` each of ``links`` has now (the default for a link not seen yet)."""
        return link_profiles(self.get_channel(), links)

    def set(self, request: channel_pb2.SetChannelRequest) -> channel_pb2.ChannelSettings:
        """``SetChannel`` (build ``request`` with :func:`set_request`)."""
        return self._stub.SetChannel(request, timeout=self.timeout_s)

    def set_link(self, link: str, uplink: channel_pb2.Profile, downlink: channel_pb2.Profile) -> None:
        """Both directions of one link, each its own custom profile."""
        for direction, profile in (("uplink", uplink), ("downlink", downlink)):
            self.set(set_request(link, direction, custom=profile))

    def set_cell(self, cell: channel_pb2.CellSettings) -> channel_pb2.ChannelSettings:
        """``SetCell``: change the fields ``cell`` sets of cell ``cell.cell`` (``default``: every ES without its own)."""
        return self._stub.SetCell(channel_pb2.SetCellRequest(cell=cell), timeout=self.timeout_s)

    def start_scenario(self, name: str, toml: str, replace: bool = False) -> channel_pb2.ChannelSettings:
        """``StartScenario``: play the scenario file's text ``toml`` as ``name`` from now on the proxy's clock
        (``replace``: stop a scenario of that name or on the same links instead of being refused)."""
        return self._stub.StartScenario(channel_pb2.StartScenarioRequest(name=name, toml=toml, replace=replace),
                                        timeout=self.timeout_s)

    def stop_scenario(self, name: str = "") -> channel_pb2.ChannelSettings:
        """``StopScenario``: stop scenario ``name`` (``""``: every one playing); its links keep their settings."""
        return self._stub.StopScenario(channel_pb2.StopScenarioRequest(name=name), timeout=self.timeout_s)

    def reset(self, stats: bool = False) -> channel_pb2.ChannelSettings:
        """Back to the start-up settings (``stats``: also zero the counters)."""
        return self._stub.ResetChannel(channel_pb2.ResetChannelRequest(stats=stats), timeout=self.timeout_s)

    def stats(self) -> channel_pb2.ChannelStats:
        return self._stub.GetStats(channel_pb2.GetStatsRequest(), timeout=self.timeout_s)

    def csi(self, link: str, direction: str = "downlink", blocks: int = 0, symbols: int = 0) -> channel_pb2.CSIResponse:
        """The fading of the next ``blocks`` blocks (or of a transmission of ``symbols``) of a link's direction."""
        return self._stub.GetCSI(channel_pb2.CSIRequest(link=link, direction=direction, blocks=blocks, symbols=symbols),
                                 timeout=self.timeout_s)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncControlClient:
    """The asyncio twin for a daemon's event loop (the ES's CSI requests). The token travels as per-call
    metadata (an aio channel takes no interceptor for it); ``await close()`` when done."""

    def __init__(self, target: str, tls: TlsFiles | None = None, token: str | None = None,
                 timeout_s: float = CONTROL_DEADLINE_S) -> None:
        self.target, self.timeout_s = target, timeout_s
        self._channel = aio_channel(target, tls)
        self._stub = channel_pb2_grpc.ChannelControlStub(self._channel)
        self._metadata: tuple[tuple[str, str], ...] = ((AUTH_HEADER, f"Bearer {token}"),) if token else ()

    async def csi(self, link: str, direction: str = "downlink", blocks: int = 0, symbols: int = 0,
                  timeout_s: float | None = None) -> channel_pb2.CSIResponse:
        """As :meth:`ControlClient.csi` (``timeout_s``: this call's deadline, default the client's)."""
        request = channel_pb2.CSIRequest(link=link, direction=direction, blocks=blocks, symbols=symbols)
        reply: channel_pb2.CSIResponse = await self._stub.GetCSI(
            request, timeout=self.timeout_s if timeout_s is None else timeout_s, metadata=self._metadata)
        return reply

    async def get_channel(self) -> channel_pb2.ChannelSettings:
        reply: channel_pb2.ChannelSettings = await self._stub.GetChannel(
            channel_pb2.GetChannelRequest(), timeout=self.timeout_s, metadata=self._metadata)
        return reply

    async def close(self) -> None:
        await self._channel.close()


def stats_by_direction(reply: channel_pb2.ChannelStats, keep: Callable[[str], bool] | None = None,
                       keys: Sequence[str] = ("rpcs", "transmissions", "symbols", "payload_bytes", "message_bytes"),
                       ) -> dict[str, dict[str, int]]:
    """Sum of ``GetStats`` counters per direction over the links for which ``keep(link)`` holds (None: all)."""
    out: dict[str, dict[str, int]] = {d: dict.fromkeys(keys, 0) for d in ("uplink", "downlink")}
    for e in reply.entries:
        if e.direction in out and (keep is None or keep(e.link)):
            for k in keys:
                out[e.direction][k] += int(getattr(e, k))
    return out


def is_not_a_proxy(exc: grpc.RpcError) -> bool:
    """The target has no control service (an ES reached directly)."""
    return bool(exc.code() == grpc.StatusCode.UNIMPLEMENTED)


__all__ = ["CONTROL_DEADLINE_S", "AsyncControlClient", "ControlClient", "LinkProfiles", "is_not_a_proxy",
           "link_profiles", "set_request", "stats_by_direction"]
