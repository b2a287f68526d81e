"""Settings round-trip through JSON; a damaged file gives the defaults instead of a crash."""

from app.settings import Settings


def test_round_trip_and_damaged_files(tmp_path):
    path = tmp_path / "s" / "settings.json"
    Settings(model_folder="/models/uni", device="cuda").save(path)
    assert Settings.load(path) == Settings(model_folder="/models/uni", device="cuda")
    path.write_text("{not json")
    assert Settings.load(path) == Settings()
    path.write_text('{"model_folder": 3, "unknown": true}')
    assert Settings.load(path) == Settings()
    assert Settings.load(tmp_path / "missing.json") == Settings()
