"""``meg-ue compare`` puts back only the link settings it changed, only where unchanged since, and never hides
the error that stopped it (:class:`ue_client.compare.LinkGuard` against a real proxy on a free port)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import grpc
import pytest

from shared.pb import channel_pb2
from shared.rpc.control import ControlClient, set_request
from ue_client.compare import LinkGuard

AWGN3 = channel_pb2.Profile(model="awgn", snr_db=3.0)
AWGN9 = channel_pb2.Profile(model="awgn", snr_db=9.0)
IDEAL = channel_pb2.Profile(model="ideal")


@contextmanager
def _proxy() -> Iterator[tuple[str, object]]:
    from channel_emulator.link import LinkTable
    from channel_emulator.proxy import create_proxy
    from shared.channel.profiles import IDEAL as IDEAL_PROFILE
    from shared.channel.profiles import load_profiles
    from tests.conftest import BackgroundLoop

    bg = BackgroundLoop()
    table = LinkTable(load_profiles(None), IDEAL_PROFILE, IDEAL_PROFILE, seed=0)
    server, port, _ = bg.run(create_proxy("127.0.0.1:0", {"es0": "127.0.0.1:9"}, table))  # type: ignore[misc]
    stopped = [False]

    def stop() -> None:
        if not stopped[0]:
            bg.run(server.stop(0))  # type: ignore[attr-defined]
            stopped[0] = True

    try:
        yield f"127.0.0.1:{port}", stop
    finally:
        stop()
        bg.close()


@pytest.fixture
def proxy() -> Iterator[str]:
    with _proxy() as (addr, _):
        yield addr


def _now(control: ControlClient, link: str) -> tuple[channel_pb2.Profile, channel_pb2.Profile]:
    return control.links([link])[link]


def test_puts_back_what_it_changed(proxy: str) -> None:
    with ControlClient(proxy) as control:
        control.set_link("a->es0", AWGN3, AWGN9)  # an operator's setting before compare
        guard = LinkGuard(control)
        guard.set({"a->es0": (IDEAL, IDEAL)})
        guard.set({"a->es0": (AWGN9, AWGN9)})  # changed twice: the first "before" is what comes back
        guard.restore()
        assert _now(control, "a->es0") == (AWGN3, AWGN9)
        assert guard.left == {}


def test_a_link_it_had_not_seen_follows_the_default_not_a_stale_copy(proxy: str) -> None:
    with ControlClient(proxy) as control:
        guard = LinkGuard(control)
        guard.set({"new->es0": (AWGN3, AWGN3)})
        control.set(set_request("", "uplink", custom=AWGN9))  # the operator changes every link and the default
        control.set_link("new->es0", AWGN3, AWGN3)  # ... our link is ours again (we set it)
        guard.restore()
        settings = control.get_channel()
        assert settings.default.uplink == AWGN9
        assert _now(control, "new->es0") == (settings.default.uplink, settings.default.downlink)


def test_leaves_an_operators_change_made_meanwhile(proxy: str) -> None:
    with ControlClient(proxy) as control:
        control.set_link("b->es0", IDEAL, IDEAL)
        guard = LinkGuard(control)
        guard.set({"b->es0": (AWGN3, AWGN3)})
        control.set(set_request("b->es0", "downlink", custom=AWGN9))  # someone else, while compare runs
        guard.restore()
        assert _now(control, "b->es0") == (IDEAL, AWGN9)  # uplink put back, downlink left as the operator set it
        assert list(guard.left) == ["b->es0 downlink"]


def test_a_failed_restore_never_hides_the_original_error() -> None:
    with _proxy() as (addr, stop), ControlClient(addr, timeout_s=2) as control:
        guard = LinkGuard(control)
        guard.set({"c->es0": (AWGN3, AWGN3)})
        stop()  # the proxy goes away: putting the links back must fail
        with pytest.raises(RuntimeError, match="the generation failed"):
            try:
                raise RuntimeError("the generation failed")
            except BaseException:
                guard.restore_quietly()
                raise
        with pytest.raises(grpc.RpcError):  # without an error in flight, the restore failure is the error
            guard.restore()
