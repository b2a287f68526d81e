"""Model set-up for the first run: copies already in the Hugging Face cache, checking a chosen
folder, and writing the tiny demo model. No widgets.

Checking a folder reads the backbone's config through engine/backbone.py, which imports torch, so
it runs in a child Python process (QProcess) and the GUI process stays torch-free; finding folders
uses only engine/checkpoint.py's torch-free `find_model_folder`.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from PySide6.QtCore import QObject, QProcess, QProcessEnvironment, Signal

from app.settings import data_folder
from engine import checkpoint  # torch-free while only finding folders

ROOT = Path(__file__).resolve().parents[1]  # the folder holding engine/ and app/
DEMO_NOTE = (
    "The demo model is tiny and random: it runs every feature, but its images are noise and its "
    "answers are nonsense. Choose the real LLaDA2.0-Uni folder for real results."
)
_VALIDATE = """
import json, sys
from engine.checkpoint import validate_model_folder
try:
    folder = validate_model_folder(sys.argv[1])
    print(json.dumps({"root": str(folder.root), "message": ""}))
except Exception as error:
    print(json.dumps({"root": "", "message": str(error)}))
"""


def hf_cache_folders() -> list[Path]:
    """Where the Hugging Face hub keeps downloads, by its own environment variables."""
    found = []
    if os.environ.get("HF_HUB_CACHE"):
        found.append(Path(os.environ["HF_HUB_CACHE"]))
    if os.environ.get("HF_HOME"):
        found.append(Path(os.environ["HF_HOME"]) / "hub")
    found.append(Path.home() / ".cache" / "huggingface" / "hub")
    return list(dict.fromkeys(p.expanduser() for p in found))


def find_cached_models(caches: list[Path] | None = None) -> list[tuple[Path, str]]:
    """(folder, problem or "") for each LLaDA2.0-Uni copy in the caches."""
    found = []
    for cache in hf_cache_folders() if caches is None else caches:
        if not cache.is_dir():
            continue
        for repo in sorted(cache.glob(checkpoint.HF_REPO_FOLDER + "*")):
            try:
                found.append((checkpoint.find_model_folder(repo).root, ""))
            except checkpoint.BadCheckpoint as error:
                found.append((repo, str(error)))
    return found


def demo_folder() -> Path:
    return data_folder() / "demo-model"


class PythonTask(QObject):
    """Runs `python -c CODE ARGS` (or `-m`) with this project on the path; one at a time.

    `line` gives each line of standard output as it comes; `finished` gives all of it."""

    finished = Signal(int, str, str)  # exit code, stdout, stderr
    line = Signal(str)

    def __init__(self, parent: QObject | None = None):
        super().__init__(parent)
        self.process = QProcess(self)
        self.process.finished.connect(self._finished)
        self.process.errorOccurred.connect(self._failed)
        self.process.readyReadStandardOutput.connect(self._read)
        self._out = b""
        self._partial = b""

    @property
    def running(self) -> bool:
        return self.process.state() != QProcess.ProcessState.NotRunning

    def start(self, args: list[str]) -> None:
        env = QProcessEnvironment.systemEnvironment()
        paths = [str(ROOT), env.value("PYTHONPATH", "")]
        env.insert("PYTHONPATH", os.pathsep.join(p for p in paths if p))
        self.process.setProcessEnvironment(env)
        self._out = self._partial = b""
        self.process.start(sys.executable, args)

    def interrupt(self) -> None:
        """Ask the child to stop as after Ctrl+C (SIGINT; Windows has none: it is killed)."""
        pid = self.process.processId()
        if not self.running or not pid:
            return
        if sys.platform == "win32":
            self.process.kill()
        else:
            import signal

            os.kill(pid, signal.SIGINT)

    def wait(self, timeout_ms: int = 120_000) -> bool:
        return self.process.waitForFinished(timeout_ms)

    def _read(self) -> None:
        data = bytes(self.process.readAllStandardOutput())
        self._out += data
        *lines, self._partial = (self._partial + data).split(b"\n")
        for line in lines:
            self.line.emit(line.decode(errors="replace"))

    def _finished(self, code: int, _status) -> None:
        self._read()
        if self._partial:
            self.line.emit(self._partial.decode(errors="replace"))
            self._partial = b""
        out = self._out.decode(errors="replace")
        err = bytes(self.process.readAllStandardError()).decode(errors="replace")
        self.finished.emit(code, out, err)

    def _failed(self, error) -> None:
        if error == QProcess.ProcessError.FailedToStart:
            self.finished.emit(-1, "", f"Python could not be started: {self.process.errorString()}")


class ModelCheck(QObject):
    """Checks a model folder with engine/checkpoint.py in a child process."""

    checked = Signal(str, str)  # the model folder's root ("" when broken), the sentence ("" = ok)

    def __init__(self, parent: QObject | None = None):
        super().__init__(parent)
        self.task = PythonTask(self)
        self.task.finished.connect(self._finished)

    def check(self, folder: str) -> None:
        self.task.start(["-c", _VALIDATE, folder])

    def _finished(self, code: int, out: str, err: str) -> None:
        try:
            result = json.loads(out.strip().splitlines()[-1])
            self.checked.emit(result["root"], result["message"])
        except (ValueError, IndexError, KeyError):
            last = err.strip().splitlines()[-1] if err.strip() else f"exit code {code}"
            self.checked.emit("", f"The model folder could not be checked: {last}")


class DemoWriter(QObject):
    """Writes the tiny random demo model (`python -m engine.tiny`) into the app's data folder."""

    written = Signal(str, str)  # the folder ("" on failure), a sentence

    def __init__(self, parent: QObject | None = None):
        super().__init__(parent)
        self.task = PythonTask(self)
        self.task.finished.connect(self._finished)
        self.folder = demo_folder()

    def write(self, folder: Path | None = None) -> None:
        self.folder = Path(folder) if folder else demo_folder()
        self.folder.parent.mkdir(parents=True, exist_ok=True)
        self.task.start(["-m", "engine.tiny", str(self.folder)])

    def _finished(self, code: int, _out: str, err: str) -> None:
        if code == 0 and (self.folder / "config.json").is_file():
            self.written.emit(str(self.folder), DEMO_NOTE)
        else:
            last = err.strip().splitlines()[-1] if err.strip() else f"exit code {code}"
            self.written.emit("", f"The demo model could not be written: {last}")


class ModelDownload(QObject):
    """Downloads the model with `python main.py download --json` in a child process.

    The child resumes what an earlier run left, checks every file and writes config.json last,
    so stopping it (cancel, a crash, the app quitting) never leaves a folder that passes for a
    model, and starting again goes on where it stopped."""

    progress = Signal(int, int, str)  # bytes done, bytes in all, a line such as "downloading …"
    finished = Signal(str, str)  # the model folder ("" unless complete), a sentence

    def __init__(self, parent: QObject | None = None):
        super().__init__(parent)
        self.task = PythonTask(self)
        self.task.line.connect(self._line)
        self.task.finished.connect(self._finished)
        self.folder = ""
        self._done = ""  # the folder the child reported complete
        self._cancelled = False

    @property
    def running(self) -> bool:
        return self.task.running

    def start(self, variant: str, folder: str) -> None:
        self.folder, self._done, self._cancelled = folder, "", False
        args = [str(ROOT / "main.py"), "download", "--json", "--variant", variant]
        self.task.start(args + ["--dir", folder])

    def cancel(self) -> None:
        self._cancelled = True
        self.task.interrupt()

    def _line(self, text: str) -> None:
        from engine.download import Progress  # torch-free

        try:
            report = json.loads(text)
        except ValueError:
            return  # not one of ours (a library's print)
        if "folder" in report:
            self._done = report["folder"]
        elif {"stage", "done", "total"} <= report.keys():
            fields = {k: report.get(k) for k in ("stage", "done", "total", "rate", "seconds_left")}
            line = Progress(**fields, file=report.get("file", "")).line()
            self.progress.emit(int(report["done"]), int(report["total"]), line)

    def _finished(self, code: int, _out: str, err: str) -> None:
        if code == 0 and self._done:
            self.finished.emit(self._done, "")
        elif self._cancelled or code == 130:
            self.finished.emit("", "The download is paused; Download goes on where it stopped.")
        else:
            errors = [line for line in err.splitlines() if line.startswith("error: ")]
            last = err.strip().splitlines()[-1] if err.strip() else f"exit code {code}"
            sentence = errors[-1].removeprefix("error: ") if errors else last
            self.finished.emit("", f"The download stopped: {sentence}")


def reload_model(client, settings) -> str:
    """Load the settings' model on their device, ahead of the queued jobs, which wait for it.

    Its LoadProgress shows in the job list like any job's progress; returns its job id."""
    return client.submit(settings.load_request(), front=True)
