"""The proxy's Prometheus metrics: a prometheus-client custom collector that reads the
:class:`~channel_emulator.link.LinkTable` counters at scrape time (nothing is counted twice, and the data
path stays untouched). Served by ``meg-channel serve --metrics-port P``.

Per link (``UE->ES``) and direction (``uplink`` / ``downlink``):

================================  =======  ==================================================
metric                            type     what
================================  =======  ==================================================
``meg_channel_rpcs_total``        counter  RPCs forwarded
``meg_channel_transmissions_total`` counter  over-the-air tensors sent through the channel
``meg_channel_symbols_total``     counter  real-valued channel symbols
``meg_channel_payload_bytes_total`` counter  bytes of over-the-air tensor data
``meg_channel_message_bytes_total`` counter  bytes of whole messages
``meg_channel_energy_total``      counter  transmit energy (normalised units)
``meg_channel_links``             gauge    links the proxy tracks
================================  =======  ==================================================

Per cell (the ES's name, ``default`` for the default cell) and direction, with time on the air
(:class:`CellCollector`, docs/airtime.md):

==================================================  =======  ============================================
``meg_channel_cell_utilisation``                    gauge    PRB × slot units granted / units elapsed
``meg_channel_cell_backlog_resource_elements``      gauge    REs queued now
``meg_channel_cell_backlog_messages``               gauge    messages queued now
``meg_channel_cell_delivered_bits_per_second``      gauge    8 × message bytes delivered / seconds
``meg_channel_cell_resource_elements_total``        counter  REs delivered
``meg_channel_cell_messages_total``                 counter  messages delivered
==================================================  =======  ============================================

``meg-channel reset --stats`` zeroes the counters; Prometheus treats that as a counter reset.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from channel_emulator.cells import CellSet
from channel_emulator.link import LinkTable

#: (metric suffix, DirectionCounters field, help)
_COUNTERS = (
    ("rpcs", "rpcs", "RPCs forwarded"),
    ("transmissions", "transmissions", "Over-the-air tensors sent through the channel"),
    ("symbols", "symbols", "Real-valued channel symbols"),
    ("payload_bytes", "payload_bytes", "Bytes of over-the-air tensor data"),
    ("message_bytes", "message_bytes", "Bytes of whole messages"),
    ("energy", "energy", "Transmit energy (normalised units)"),
)


class LinkCollector(Collector):
    """Reads a :class:`LinkTable`'s per-link, per-direction counters when Prometheus scrapes."""

    def __init__(self, table: LinkTable) -> None:
        self.table = table

    def _snapshot(self) -> list[tuple[str, str, object]]:
        # The event loop may add a link while we copy (scrapes run in the HTTP thread): retry then.
        for _ in range(10):
            try:
                return [(link, d, v.counters) for link, dirs in list(self.table.links.items()) for d, v in dirs.items()]
            except RuntimeError:
                continue
        return []

    def collect(self) -> Iterator[Metric]:
        rows = self._snapshot()
        for suffix, attr, help_ in _COUNTERS:
            family = CounterMetricFamily(f"meg_channel_{suffix}", help_, labels=["link", "direction"])
            for link, direction, counters in rows:
                family.add_metric([link, direction], float(getattr(counters, attr)))
            yield family
        yield GaugeMetricFamily("meg_channel_links", "Links the proxy tracks", value=len({r[0] for r in rows}))


class CellCollector(Collector):
    """Reads a :class:`~channel_emulator.cells.CellSet`'s per-cell counters when Prometheus scrapes."""

    def __init__(self, cells: CellSet) -> None:
        self.cells = cells

    def collect(self) -> Iterator[Metric]:
        try:  # computed on the proxy's event loop (the schedulers are brought up to now there)
            rows = self.cells.stats_from_any_thread()
        except (TimeoutError, RuntimeError):
            rows = []
        gauges = (("utilisation", "utilisation", "PRB x slot units granted / units elapsed"),
                  ("backlog_resource_elements", "backlog_resource_elements", "Resource elements queued now"),
                  ("backlog_messages", "backlog_messages", "Messages queued now"),
                  ("delivered_bits_per_second", "delivered_bits_per_s", "8 x message bytes delivered / seconds"))
        for suffix, attr, help_ in gauges:
            g = GaugeMetricFamily(f"meg_channel_cell_{suffix}", help_, labels=["cell", "direction"])
            for r in rows:
                g.add_metric([r.cell, r.direction], float(getattr(r, attr)))
            yield g
        for suffix, attr, help_ in (("resource_elements", "resource_elements", "Resource elements delivered"),
                                    ("messages", "messages", "Messages delivered")):
            c = CounterMetricFamily(f"meg_channel_cell_{suffix}", help_, labels=["cell", "direction"])
            for r in rows:
                c.add_metric([r.cell, r.direction], float(getattr(r, attr)))
            yield c


def serve_link_metrics(table: LinkTable, host: str, port: int, extra: Sequence[Collector] = ()) -> tuple[WSGIServer, int]:
    """Serve ``table``'s counters on ``http://host:port/metrics`` (``--metrics-listen``, loopback by default; 0 = a free port)
    in a daemon thread, from a registry of its own, with the ``extra`` collectors (the upstream membership's).
    Returns ``(server, port)``."""
    registry = CollectorRegistry()
    registry.register(LinkCollector(table))
    for collector in extra:
        registry.register(collector)
    server, _thread = start_http_server(port, addr=host.strip("[]"), registry=registry)
    return server, int(server.server_port)
