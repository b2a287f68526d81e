"""ui/tool_bar.py: the controls set the shared Tools and act on the current document's mask."""

import numpy as np

from app.settings import Settings
from app.tools import LASSO
from app.workspace import Workspace
from ui.tool_bar import ToolOptions


def test_controls_set_the_tools_and_mask_actions_reach_the_current_document(qtbot):
    workspace = Workspace(Settings(), lambda r: None, save_settings=lambda: None)
    bar = ToolOptions(workspace)
    qtbot.addWidget(bar)
    tools = workspace.tools
    assert not any(a.isEnabled() for a in bar.mask_actions)
    bar.size_slider.setValue(120)
    bar.hardness.setValue(30)
    bar.opacity.setValue(70)
    bar.tool_actions[LASSO].trigger()
    bar.eraser.setChecked(True)
    assert (tools.size, tools.hardness, tools.overlay_opacity) == (120, 0.3, 0.7)
    assert tools.tool == LASSO and tools.eraser
    tools.grow()  # `]` on the canvas: the bar follows
    assert bar.size_box.value() == round(tools.size) and bar.size_slider.value() == 150
    document = workspace.open_image(np.zeros((8, 10, 3), np.uint8))
    invert, clear, fill = bar.mask_actions
    fill.trigger()
    assert document.mask.as_bool().all()
    invert.trigger()
    assert not document.mask.any()
    fill.trigger()
    clear.trigger()
    assert not document.mask.any() and document.can_undo
