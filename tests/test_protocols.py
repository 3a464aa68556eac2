import pytest

from shared.protocol.plan import plan
from shared.protocol.registry import PROTOCOLS, check_prompt, get_protocol
from shared.protocol.stages import ProtocolError


def test_ciag_plan_is_derived_from_the_stages() -> None:
    _, stages = get_protocol("ciag", "txt2img")
    segments = plan(stages, "txt2img")
    assert [s.actor for s in segments] == ["UE", "ES", "UE"]
    assert segments[0].receives == () and segments[0].returns == ("cond",)
    assert segments[1].receives == ("cond",) and segments[1].returns == ("seed",)
    assert segments[2].receives == ("seed",)


@pytest.mark.parametrize(
    "name, up, down",
    [("FULL-ES", ("prompt",), ("image",)), ("UIEG", ("cond",), ("image",)),
     ("EIUG", ("prompt",), ("seed",)), ("CIAG", ("cond",), ("seed",)), ("ESUC", ("prompt",), ("sketch",))],
)
def test_what_crosses_each_protocol(name: str, up: tuple[str, ...], down: tuple[str, ...]) -> None:
    _, stages = get_protocol(name, "txt2img")
    es = [s for s in plan(stages, "txt2img") if s.actor == "ES"]
    assert len(es) == 1
    assert es[0].receives == up and es[0].returns == down


def test_unknown_protocol_and_task() -> None:
    with pytest.raises(ProtocolError, match="unknown protocol 'XYZ'"):
        get_protocol("XYZ", "txt2img")
    with pytest.raises(ProtocolError, match="no 'video' variant"):
        get_protocol("CIAG", "video")
    assert "CIAG" in PROTOCOLS


def test_prompt_checks() -> None:
    assert check_prompt("  a red circle ") == "a red circle"
    with pytest.raises(ProtocolError, match="empty"):
        check_prompt("   ")
    with pytest.raises(ProtocolError, match="limit is 1000"):
        check_prompt("x" * 1001)


@pytest.mark.parametrize("task", ["txt2img", "img2img"])
@pytest.mark.parametrize("name", list(PROTOCOLS))
def test_every_protocol_plans_to_an_image_on_the_ue(name: str, task: str) -> None:
    _, stages = get_protocol(name, task)
    segments = plan(stages, task)  # type: ignore[arg-type]
    assert segments[-1].actor == "UE" or "image" in segments[-1].returns
    assert len([s for s in segments if s.actor == "ES"]) <= 1  # single-ES protocols: one round trip
    if name == "FULL-UE":
        assert [s.actor for s in segments] == ["UE"]
