"""Collect diagnostics: the app, the running engine's own report, the model and doctor's checks,
with the home folder and user name scrubbed."""

import getpass
from pathlib import Path

from app import diagnostics
from tests.app.test_engine_client import loop, scenario  # noqa: F401 (a fixture and a wrapper)


@scenario
async def test_the_report_has_every_part_and_nothing_private(client, tmp_path):
    text = await diagnostics.collect(client, str(tmp_path / "no-model-here"))
    for section in ("[app]", "[running engine]", "[model]", "[system]", "[torch]", "[verdict]"):
        assert section in text
    assert "loaded: fake backbone, fake decoder" in text and "device: cpu" in text
    assert "does not exist" in text  # the model folder's own sentence
    assert str(Path.home()) not in text
    user = getpass.getuser()
    if len(user) >= 3:
        assert f" {user} " not in text and f"/{user}/" not in text


def test_model_lines_name_the_checkpoint(tiny_checkpoint):
    lines = dict(diagnostics.model_lines(str(tiny_checkpoint)))
    assert lines["architecture"] == "LLaDA2MoeModelLM" and lines["model folder"]
