"""The installers that cannot run here, checked statically: install.sh parses as POSIX sh (dash,
bash, and shellcheck when installed), install.ps1 passes a structural check, and both have the
same named steps, pins and GPU rules. The lock files agree with pyproject.toml.

No PowerShell runs on this machine: Debian has no package for it, and PyPI and npm hold only
wrappers that download it from elsewhere, which this machine cannot reach. So install.ps1 gets a
check we can run: a small lexer drops comments, strings and here-strings (keeping the code inside
"$(...)"), then brackets must balance, nothing may be left unterminated, PowerShell 5.1's missing
`&&` and `||` must not appear, every step must be a function defined once, and every $script:
variable read must be assigned somewhere. The lexer itself is tested on broken snippets below.
"""

from __future__ import annotations

import plistlib
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
INSTALLERS = ROOT / "installers"
SH = (INSTALLERS / "install.sh").read_text()
PS1 = (INSTALLERS / "install.ps1").read_text()
PAIRS = {"(": ")", "{": "}", "[": "]"}


class PowerShellLexer:
    """Yields the code of a PowerShell script with comments and string contents removed."""

    def __init__(self, text: str):
        self.text, self.i, self.line = text, 0, 1

    def error(self, message: str) -> SyntaxError:
        return SyntaxError(f"line {self.line}: {message}")

    def code(self, until: str | None = None) -> list[tuple[int, str]]:
        """(line, character) of code up to the `until` that closes a subexpression."""
        out: list[tuple[int, str]] = []
        depth = 0
        while self.i < len(self.text):
            c, rest = self.text[self.i], self.text[self.i : self.i + 3]
            if until and c == until and depth == 0:
                self.i += 1
                return out
            if rest.startswith("<#"):
                self.skip_to("#>")
            elif c == "#":
                self.skip_to("\n", keep=True)
            elif rest in ("@'\n", '@"\n') or rest[:2] in ("@'", '@"') and rest[2:] == "\r":
                self.here_string(rest[1])
            elif c == "'":
                self.single_quoted()
            elif c == '"':
                out += self.double_quoted()
            elif c == "`":  # an escaped character, or a line continuation
                self.i += 2
            else:
                if c == "\n":
                    self.line += 1
                if until and c == "(":
                    depth += 1
                if until and c == ")":
                    depth -= 1
                out.append((self.line, c))
                self.i += 1
        if until:
            raise self.error("a $( subexpression is not closed")
        return out

    def skip_to(self, end: str, keep: bool = False) -> None:
        found = self.text.find(end, self.i)
        if found < 0:
            raise self.error(f"unterminated comment (no {end!r})")
        self.line += self.text.count("\n", self.i, found)
        self.i = found if keep else found + len(end)

    def here_string(self, quote: str) -> None:
        match = re.compile(rf"^{quote}@", re.M).search(self.text, self.i + 2)
        if match is None:
            raise self.error("unterminated here-string")
        self.line += self.text.count("\n", self.i, match.end())
        self.i = match.end()

    def single_quoted(self) -> None:
        self.i += 1
        while self.i < len(self.text):
            if self.text[self.i] == "'":
                if self.text[self.i + 1 : self.i + 2] == "'":  # '' is a quote inside
                    self.i += 2
                    continue
                self.i += 1
                return
            self.line += self.text[self.i] == "\n"
            self.i += 1
        raise self.error("unterminated single-quoted string")

    def double_quoted(self) -> list[tuple[int, str]]:
        start, inner = self.line, []
        self.i += 1
        while self.i < len(self.text):
            c = self.text[self.i]
            if c == "`":
                self.i += 2
            elif c == '"':
                self.i += 1
                return inner
            elif self.text.startswith("$(", self.i):
                self.i += 2
                inner += [(self.line, "(")] + self.code(until=")") + [(self.line, ")")]
            else:
                self.line += c == "\n"
                self.i += 1
        raise SyntaxError(f"line {start}: unterminated double-quoted string")


def check_powershell(text: str) -> None:
    """Raise SyntaxError where install.ps1's structure is wrong (see the module docstring)."""
    code = PowerShellLexer(text).code()
    stack: list[tuple[int, str]] = []
    for line, c in code:
        if c in PAIRS:
            stack.append((line, c))
        elif c in PAIRS.values():
            if not stack or PAIRS[stack[-1][1]] != c:
                raise SyntaxError(f"line {line}: {c!r} closes nothing open")
            stack.pop()
    if stack:
        raise SyntaxError(f"line {stack[-1][0]}: {stack[-1][1]!r} is never closed")
    flat = "".join(c for _, c in code)
    for operator in ("&&", "||"):
        if operator in flat:
            raise SyntaxError(f"{operator} is not PowerShell 5.1 syntax")
    defined = re.findall(r"^function ([\w-]+)", text, re.M)
    twice = {name for name in defined if defined.count(name) > 1}
    if twice:
        raise SyntaxError(f"functions defined twice: {sorted(twice)}")
    for step in ps1_steps(text):
        if step not in defined:
            raise SyntaxError(f"the step {step} has no function")
    assigned = set(re.findall(r"\$script:(\w+)\s*[+]?=(?!=)", flat))
    read = set(re.findall(r"\$script:(\w+)", flat)) | set(re.findall(r"\$\(\$script:(\w+)", text))
    if read - assigned:
        raise SyntaxError(f"$script: variables read but never set: {sorted(read - assigned)}")


def sh_steps(text: str) -> list[str]:
    return re.findall(r"^run_step (\w+)$", text, re.M)


def ps1_steps(text: str) -> list[str]:
    return re.findall(r"^\s*Invoke-Step (\w+)\s*$", text, re.M)


# install.sh


@pytest.mark.parametrize("shell", ["dash", "bash"])
def test_install_sh_parses(shell):
    if shutil.which(shell) is None:
        pytest.skip(f"{shell} is not installed")
    for script in ("install.sh", "macos-launcher.sh"):
        run = subprocess.run([shell, "-n", str(INSTALLERS / script)], capture_output=True)
        assert run.returncode == 0, run.stderr.decode()


def test_install_sh_passes_shellcheck():
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed (Debian: apt install shellcheck)")
    run = subprocess.run(
        ["shellcheck", "-s", "sh", "install.sh", "macos-launcher.sh"],
        cwd=INSTALLERS,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stdout


def sh_function(name: str) -> str:
    match = re.search(rf"^{name}\(\) \{{[^\n]*\n.*?^\}}\n", SH, re.M | re.S)
    assert match, name
    return match.group(0)


@pytest.mark.parametrize(
    ("driver", "capability", "build"),
    [
        ("595", "12.0", "cu130"),  # Blackwell, new driver
        ("580", "8.6", "cu130"),
        ("575", "8.9", "cu128"),
        ("565", "8.6", "cu126"),
        ("590", "6.1", "cu126"),  # Pascal stops at cu126 whatever the driver
        ("590", "7.0", "cu126"),  # Volta too
        ("590", "7.5", "cu130"),  # Turing is current
        ("590", "", "cu130"),  # an old nvidia-smi that cannot tell the capability
        ("550", "8.6", "cpu"),  # too old a driver for any build
    ],
)
def test_install_sh_picks_the_cuda_build_for_driver_and_card(driver, capability, build):
    script = sh_function("choose_cuda_build") + f'choose_cuda_build {driver} "{capability}"\n'
    run = subprocess.run(["sh", "-c", script], capture_output=True, text=True)
    assert run.stdout.strip() == build, run.stderr


# install.ps1


def test_install_ps1_passes_the_structural_check():
    check_powershell(PS1)


@pytest.mark.parametrize(
    ("snippet", "problem"),
    [
        ("function a { if ($x) { 1 }\n", "never closed"),
        ("function a { (1]) }\n", "closes nothing"),
        ("$a = 'unterminated\n", "unterminated single-quoted"),
        ("$a = \"text $(Get-Item 'x' \n", "not closed"),
        ("$a = @'\nnever ends\n", "unterminated here-string"),
        ("<# open comment\n", "unterminated comment"),
        ("if (Test-Path x) { a } && b\n", "not PowerShell 5.1"),
        ("Invoke-Step missing\n", "has no function"),
        ("Write-Host $script:Typo\n", "never set"),
        ("function a { }\nfunction a { }\n", "defined twice"),
    ],
)
def test_the_powershell_check_finds_broken_scripts(snippet, problem):
    with pytest.raises(SyntaxError, match=problem):
        check_powershell(snippet)


def test_the_powershell_check_reads_strings_and_comments_right():
    check_powershell(
        "# a comment with ( and {\n<# a block ) comment #>\n"
        "$s = 'it''s (fine'\n$t = \"a `\" quote and $($x + (1)) and { brace\"\n"
        "$h = @'\n) unbalanced inside a here-string (\n'@\n$script:A = 1\nWrite-Host $script:A\n"
    )


# Both scripts


def test_both_scripts_have_the_same_steps_in_the_same_order():
    steps = sh_steps(SH)
    assert len(steps) >= 8
    assert ps1_steps(PS1) == steps
    for step in steps:
        assert re.search(rf"^{step}\(\) \{{", SH, re.M), step
        assert re.search(rf"^function {step} \{{", PS1, re.M), step


def test_both_scripts_pin_the_same_versions_and_gpu_rules():
    def sh_value(name: str) -> str:
        return re.search(rf"^{name}=(\S+)", SH, re.M).group(1)

    def ps1_value(name: str) -> str:
        return re.search(rf"^\${name} = '?([^'\s]+)'?", PS1, re.M).group(1)

    assert sh_value("TORCH_VERSION") == ps1_value("TorchVersion")
    assert sh_value("UV_VERSION") == ps1_value("UvVersion")
    assert sh_value("PYTHON_VERSION") == ps1_value("PythonVersion")
    assert sh_value("MIN_FREE_GB") == ps1_value("MinFreeGB")
    assert sh_value("TORCH_INDEX_BASE") == ps1_value("TorchIndexBase")
    sh_rules = re.findall(r"-ge (\d+) \].*?echo (cu\d+)", sh_function("choose_cuda_build"))
    ps1_body = PS1[PS1.index("function Select-CudaBuild") :]
    ps1_rules = re.findall(r"-ge (\d+).*?return '(cu\d+)'", ps1_body[: ps1_body.index("\n}\n")])
    assert sh_rules == ps1_rules and len(sh_rules) == 3
    for variable in ("LLADA_STUDIO_HOME", "LLADA_STUDIO_SOURCE", "LLADA_STUDIO_PYTHON"):
        assert variable in SH and variable in PS1
    for variable in ("LLADA_STUDIO_TORCH", "LLADA_STUDIO_TORCH_INDEX", "--resume-retries"):
        assert variable in SH and variable in PS1


def test_lock_files_agree_with_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = [d for d in project["dependencies"] if not d.lower().startswith("torch")]
    lines = (INSTALLERS / "requirements.txt").read_text().splitlines()
    assert [line for line in lines if line and not line.startswith("#")] == wanted
    pins = {}
    for line in (INSTALLERS / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"constraints.txt must pin with ==: {line}"
            pins[name] = version
    for requirement in wanted:
        name = re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0]
        normal = re.sub(r"[-_.]+", "-", name).lower()
        assert normal in pins, f"{name} is not pinned in constraints.txt"
        if "==" in requirement:
            assert requirement.split("==")[1] == pins[normal]
    assert "pip" in pins  # --resume-retries needs pip 25.1 or newer


def test_launcher_templates_are_complete():
    entry = (INSTALLERS / "llada-studio.desktop").read_text()
    for key in ("[Desktop Entry]", "Type=Application", "Name=LLaDA Studio", "Exec=", "Icon="):
        assert key in entry
    plist = plistlib.loads((INSTALLERS / "Info.plist").read_bytes())
    assert plist["CFBundleExecutable"] == "llada-studio"
    assert (ROOT / "resources" / "icons" / plist["CFBundleIconFile"]).exists()
    assert (ROOT / "resources" / "icons" / "app.ico").exists()  # the Start menu entry's icon
    assert (ROOT / "resources" / "icons" / "app.svg").exists()  # the .desktop file's icon


@pytest.mark.parametrize("path", ["/home/a b/llada-studio", "/opt/R&D/x|y", "/tmp/back\\slash"])
def test_install_sh_writes_any_path_into_the_launcher_templates(path):
    use = 'printf "Exec=@EXEC@" | sed "s|@EXEC@|$(sed_escape "$1")|g"'
    script = sh_function("sed_escape") + use
    run = subprocess.run(["sh", "-c", script, "sh", path], capture_output=True, text=True)
    assert run.stdout == f"Exec={path}", run.stderr
