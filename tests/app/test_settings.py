"""Settings round-trip through JSON; a damaged file is set aside with a sentence and the defaults
are used; a field of the wrong type falls back alone."""

from app.settings import Settings


def test_round_trip(tmp_path):
    path = tmp_path / "s" / "settings.json"
    chosen = Settings(model_folder="/models/uni", device="cuda", precision="int4", theme="dark")
    chosen.brush_size, chosen.edit_cfg_text, chosen.turbo_decoder = 12, 5.5, False
    chosen.save(path)
    assert Settings.load(path) == chosen
    assert not Settings.load(path).needs_setup
    assert [p.name for p in path.parent.iterdir()] == ["settings.json"]  # no temporary left


def test_a_corrupt_file_is_set_aside_with_a_sentence(tmp_path):
    path = tmp_path / "settings.json"
    path.write_text("{not json")
    settings, notice = Settings.load_checked(path)
    assert settings == Settings() and settings.needs_setup
    assert notice.startswith("The settings file was damaged") and "defaults are used" in notice
    (aside,) = tmp_path.glob("settings.json.damaged-*")
    assert aside.read_text() == "{not json"
    assert not path.exists()
    path.write_text("[1, 2]")
    assert "did not hold settings" in Settings.load_checked(path)[1]


def test_wrong_fields_fall_back_alone_and_missing_file_is_quiet(tmp_path):
    path = tmp_path / "settings.json"
    path.write_text('{"model_folder": 3, "unknown": true, "device": "cpu", "brush_size": true,'
                    ' "mask_opacity": 1}')  # fmt: skip
    settings, notice = Settings.load_checked(path)
    assert notice == "" and settings == Settings(device="cpu", mask_opacity=1.0)
    assert Settings.load_checked(tmp_path / "missing.json") == (Settings(), "")


def test_the_model_loads_with_the_chosen_device_precision_and_vram_preset():
    auto = Settings(model_folder="/m").load_request()
    assert (auto.folder, auto.device, auto.precision, auto.vram) == ("/m", "auto", None, None)
    small = Settings(model_folder="/m", device="cuda:1", precision="int4", vram_preset="medium")
    request = small.load_request("/other")
    assert (request.folder, request.device, request.precision, request.vram) == (
        "/other", "cuda:1", "int4", 16.0
    )  # fmt: skip
    assert request.job_id != small.load_request().job_id


def test_a_lower_preset_after_running_out_of_memory_is_off_until_chosen(tmp_path):
    path = tmp_path / "settings.json"
    assert Settings().allow_lower_preset is False
    assert Settings(model_folder="/m").load_request().allow_lower_preset is False
    chosen = Settings(model_folder="/m", allow_lower_preset=True)
    chosen.save(path)
    loaded = Settings.load(path)
    assert loaded.allow_lower_preset is True
    assert loaded.load_request("/other").allow_lower_preset is True
    path.write_text('{"allow_lower_preset": "yes"}')  # a wrong type falls back to off alone
    assert Settings.load(path).allow_lower_preset is False
