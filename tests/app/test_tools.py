"""Tools: tool options clamp to their ranges and say when they change."""

import pytest

from app.tools import LASSO, MAX_SIZE, MIN_SIZE, Tools


def test_size_steps_clamp_and_signal():
    tools = Tools(size=40)
    sizes = []
    tools.size_changed.connect(sizes.append)
    tools.grow()
    tools.shrink()
    assert sizes == [50.0, 40.0]
    tools.set_size(10_000)
    assert tools.size == MAX_SIZE
    for _ in range(60):
        tools.shrink()
    assert tools.size == MIN_SIZE and tools.radius == MIN_SIZE / 2
    count = len(sizes)
    tools.set_size(MIN_SIZE)  # no change, no signal
    assert len(sizes) == count


def test_tool_hardness_eraser_and_overlay():
    tools = Tools()
    seen = []
    tools.tool_changed.connect(seen.append)
    tools.eraser_changed.connect(seen.append)
    tools.overlay_changed.connect(lambda: seen.append("overlay"))
    tools.set_tool(LASSO)
    tools.toggle_eraser()
    tools.set_overlay_color((300, -5, 10))
    tools.set_overlay_opacity(2)
    tools.toggle_overlay()
    tools.set_hardness(-1)
    assert seen == [LASSO, True, "overlay", "overlay", "overlay"]
    assert tools.overlay_color == (255, 0, 10) and tools.overlay_opacity == 1.0
    assert tools.hardness == 0.0 and not tools.overlay_visible
    with pytest.raises(ValueError, match="brush, rect, lasso"):
        tools.set_tool("spray")
