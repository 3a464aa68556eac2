"""The gRPC metadata names MEG puts on its calls (the one home of every header string).

========================  =========================================================================
``meg-ue``                the UE's id: the proxy keys the UE's links by it (``UE->ES``)
``meg-es``                which named ES (upstream) the call is for
``meg-channel-control``   where an ES reaches the proxy's ChannelControl service for CSI
``meg-request-id``        repeats a RunSegment's ``request_id`` (the body is the truth) for logs
``authorization``         ``Bearer <token>``: grpc's access-token credentials
``meg-airtime``           trailing metadata the proxy puts on every RPC through a cell: JSON of the
                          message's time on the air per direction (``shared.channel.airtime``)
========================  =========================================================================
"""

from __future__ import annotations

UE_HEADER = "meg-ue"
ES_HEADER = "meg-es"
CONTROL_HEADER = "meg-channel-control"
REQUEST_ID_HEADER = "meg-request-id"
AUTH_HEADER = "authorization"
AIRTIME_HEADER = "meg-airtime"
