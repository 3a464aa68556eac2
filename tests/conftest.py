"""Fixtures: tiny random models (diffusers' get_dummy_components habit), real servers on free ports."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import shared  # noqa: F401 - Hugging Face offline for the tests and their subprocesses (one home: shared/__init__.py)
from shared.model.random_pipeline import save_random_pipeline


@pytest.fixture(scope="session")
def random_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random StableDiffusionPipeline folder (32×32 images, 4×4×4 latents)."""
    return save_random_pipeline(tmp_path_factory.mktemp("random-model") / "pipe", seed=0, image_size=32)


class BackgroundLoop:
    """An asyncio loop in a thread, for running grpc.aio servers beside synchronous test code."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: object, timeout: float = 120.0) -> object:
        fut: Future = asyncio.run_coroutine_threadsafe(coro, self.loop)  # type: ignore[arg-type]
        return fut.result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@dataclass
class Stack:
    """An ES and a channel proxy in front of it, in this process, on free loopback ports."""

    es_addr: str
    proxy_addr: str
    link: Any  # channel_emulator.link.LinkTable
    parts: Any  # shared.model.ops.ModelParts


@contextmanager
def running_stack(parts: Any, settings: Any = None, uplink: Any = None, downlink: Any = None,
                  seed: int = 0) -> Iterator[Stack]:
    """Start ``create_server`` (with ``settings``, default: any free port) and ``create_proxy`` in front
    of it (uplink/downlink profiles, default ideal) on a background loop; stop both on exit."""
    from channel_emulator.link import LinkTable
    from channel_emulator.proxy import create_proxy
    from edge_server.server import create_server
    from edge_server.settings import EdgeSettings
    from shared.channel.profiles import IDEAL, load_profiles

    bg = BackgroundLoop()
    es, es_port, _ = bg.run(create_server(settings or EdgeSettings(listen="127.0.0.1:0"), parts))  # type: ignore[misc]
    table = LinkTable(load_profiles(None), uplink or IDEAL, downlink or IDEAL, seed=seed)
    proxy, proxy_port, _ = bg.run(create_proxy("127.0.0.1:0", {"es0": f"127.0.0.1:{es_port}"}, table))  # type: ignore[misc]
    try:
        yield Stack(f"127.0.0.1:{es_port}", f"127.0.0.1:{proxy_port}", table, parts)
    finally:
        bg.run(proxy.stop(0))
        bg.run(es.stop(0))
        bg.close()


@pytest.fixture(scope="module")
def inproc_stack(random_model_dir: Path) -> Iterator[Stack]:
    """The tiny random model behind an ES (4 MiB message limit) and a proxy, for the module's tests."""
    from edge_server.settings import EdgeSettings
    from shared.model.ops import ModelParts

    parts = ModelParts.load(str(random_model_dir), "cpu")
    with running_stack(parts, EdgeSettings(listen="127.0.0.1:0", max_message_bytes=4 * 1024 * 1024)) as stack:
        yield stack


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """``slow`` tests (real processes, a model end to end) get 600 s unless they set their own timeout; the
    rest keep pyproject's default (300 s, a hang catcher)."""
    for item in items:
        if item.get_closest_marker("slow") and not item.get_closest_marker("timeout"):
            item.add_marker(pytest.mark.timeout(600))
