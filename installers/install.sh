#!/bin/sh
# LLaDA Studio installer for Linux and macOS. Run it again at any time to upgrade in place; an
# install that was interrupted picks up where it stopped.
#
#   sh install.sh
#
# It needs only this script: it uses a Python 3.11+ that has venv and pip when there is one, and
# otherwise fetches uv and a standalone Python. It detects the GPU and driver, installs the
# matching torch build, then the app's locked packages, and adds a launcher. Settings, all optional:
#
#   LLADA_STUDIO_HOME         where to install (default: ~/.local/share/llada-studio on Linux,
#                             ~/Library/Application Support/LLaDA Studio on macOS)
#   LLADA_STUDIO_SOURCE       the app's source: a folder or a git URL (default: the checkout this
#                             script sits in, else LLADA_STUDIO_REPO below)
#   LLADA_STUDIO_PYTHON       the Python to build the environment with (default: found, else uv's)
#   LLADA_STUDIO_TORCH        cpu, cu126, cu128, cu130 or default (PyPI's build) instead of
#                             detecting the GPU
#   LLADA_STUDIO_TORCH_INDEX  the package index for torch, or "pip" to use pip's own settings
#
# Steps are named (run_step NAME); install.ps1 has the same steps under the same names.

set -eu

TORCH_VERSION=2.13.0
UV_VERSION=0.13.9
PYTHON_VERSION=3.12
MIN_FREE_GB=8
TORCH_INDEX_BASE=https://download.pytorch.org/whl
LLADA_STUDIO_REPO=${LLADA_STUDIO_REPO:-}  # the project's public git URL, once it has one
PIP_FLAGS="--disable-pip-version-check --no-input --retries 10 --timeout 60"

STEP=""
HINT=""

say() { printf '%s\n' "$*"; }

fail() {
    say "error: $*" >&2
    exit 1
}

run_step() {
    STEP=$1
    HINT=""
    say "==> [$1]"
    "$1"
}

on_exit() {
    status=$?
    if [ "$status" -ne 0 ] && [ -n "$STEP" ]; then
        say "LLaDA Studio was not installed: the step '$STEP' failed. $HINT" >&2
        say "Run this installer again once that is fixed; finished steps are kept." >&2
    fi
}
trap on_exit EXIT

pip_install() {
    # shellcheck disable=SC2086 # PIP_FLAGS is a list of words on purpose
    "$VENV/bin/python" -m pip install $PIP_FLAGS "$@"
}

sed_escape() {  # a path as the replacement text of sed's s|...|...|
    printf '%s' "$1" | sed 's/[|&\\]/\\&/g'
}

download() {  # download URL FILE
    if command -v curl >/dev/null 2>&1; then
        curl -fsSL --retry 5 -o "$2" "$1"
    elif command -v wget >/dev/null 2>&1; then
        wget -q -O "$2" "$1"
    else
        fail "Neither curl nor wget is installed; install one of them."
    fi
}

# A Python is suitable when it is 3.11+ and can make a virtual environment with pip in it.
suitable_python() {
    "$1" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null || return 1
    probe="$INSTALL_DIR/probe-venv"
    rm -rf "$probe"
    "$1" -m venv "$probe" >/dev/null 2>&1 || { rm -rf "$probe"; return 1; }
    "$probe/bin/python" -m pip --version >/dev/null 2>&1 || { rm -rf "$probe"; return 1; }
    rm -rf "$probe"
}

check_system() {
    HINT="This installer supports Linux and macOS on Apple Silicon."
    OS=$(uname -s)
    ARCH=$(uname -m)
    case "$OS" in
        Linux)
            DEFAULT_HOME="${XDG_DATA_HOME:-$HOME/.local/share}/llada-studio" ;;
        Darwin)
            [ "$ARCH" = arm64 ] || fail "LLaDA Studio needs a Mac with Apple Silicon (M1 or later): torch no longer ships for Intel Macs."
            DEFAULT_HOME="$HOME/Library/Application Support/LLaDA Studio" ;;
        *)
            fail "This installer is for Linux and macOS; on Windows, run install.ps1." ;;
    esac
    INSTALL_DIR=${LLADA_STUDIO_HOME:-$DEFAULT_HOME}
    VENV="$INSTALL_DIR/env"
    APP="$INSTALL_DIR/app"
    HINT="Check that you may write to $INSTALL_DIR, or set LLADA_STUDIO_HOME to another folder."
    mkdir -p "$INSTALL_DIR"
    free_kb=$(df -Pk "$INSTALL_DIR" | awk 'NR == 2 { print $4 }')
    if [ "$free_kb" -lt $((MIN_FREE_GB * 1024 * 1024)) ]; then
        fail "The install needs $MIN_FREE_GB GB free at $INSTALL_DIR, which has $((free_kb / 1024 / 1024)) GB; free some space or set LLADA_STUDIO_HOME to another disk."
    fi
    say "installing into $INSTALL_DIR ($OS $ARCH)"
}

get_source() {
    here=""
    if [ -f "$0" ]; then here=$(cd "$(dirname "$0")/.." && pwd); fi
    source=${LLADA_STUDIO_SOURCE:-}
    if [ -z "$source" ] && [ -n "$here" ] && [ -f "$here/main.py" ] && [ -f "$here/installers/constraints.txt" ]; then
        source=$here
    fi
    source=${source:-$LLADA_STUDIO_REPO}
    [ -n "$source" ] || fail "Set LLADA_STUDIO_SOURCE to the app's git URL or source folder."
    HINT="Check that $source can be read (for a git URL: git is installed and the network is up)."
    rm -rf "$APP.new"
    if [ -d "$source" ]; then
        mkdir -p "$APP.new"
        (cd "$source" && tar cf - --exclude=./.git --exclude=./.venv --exclude=./.whl \
            --exclude='__pycache__' --exclude='*.egg-info' --exclude=./.pytest_cache \
            --exclude=./.ruff_cache --exclude=./.tiny .) | (cd "$APP.new" && tar xf -)
    else
        command -v git >/dev/null 2>&1 || fail "git is needed to fetch $source; install git."
        git clone --quiet --depth 1 "$source" "$APP.new"
    fi
    [ -f "$APP.new/main.py" ] || fail "$source does not hold LLaDA Studio (no main.py)."
    rm -rf "$APP.old"
    if [ -d "$APP" ]; then mv "$APP" "$APP.old"; fi
    mv "$APP.new" "$APP"
    rm -rf "$APP.old"
    CONSTRAINTS="$APP/installers/constraints.txt"
}

find_python() {
    HINT="Install Python 3.11 or newer with venv and pip (Debian/Ubuntu: sudo apt install python3-venv), or let the installer fetch one: check the network."
    PYTHON=""
    if [ -n "${LLADA_STUDIO_PYTHON:-}" ]; then
        suitable_python "$LLADA_STUDIO_PYTHON" || fail "LLADA_STUDIO_PYTHON ($LLADA_STUDIO_PYTHON) is not a Python 3.11+ with venv and pip."
        PYTHON=$LLADA_STUDIO_PYTHON
    elif [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -m pip --version >/dev/null 2>&1; then
        PYTHON="$VENV/bin/python"
        say "keeping the environment's Python"
        return
    else
        for candidate in python3.13 python3.12 python3.11 python3; do
            if command -v "$candidate" >/dev/null 2>&1 && suitable_python "$candidate"; then
                PYTHON=$(command -v "$candidate")
                break
            fi
        done
    fi
    if [ -z "$PYTHON" ]; then
        say "no suitable Python here: fetching uv $UV_VERSION and Python $PYTHON_VERSION"
        uv="$INSTALL_DIR/uv/uv"
        if [ ! -x "$uv" ]; then
            download "https://astral.sh/uv/$UV_VERSION/install.sh" "$INSTALL_DIR/uv-install.sh"
            UV_INSTALL_DIR="$INSTALL_DIR/uv" UV_NO_MODIFY_PATH=1 sh "$INSTALL_DIR/uv-install.sh"
        fi
        UV_PYTHON_INSTALL_DIR="$INSTALL_DIR/python" "$uv" python install "$PYTHON_VERSION"
        PYTHON=$(UV_PYTHON_INSTALL_DIR="$INSTALL_DIR/python" "$uv" python find "$PYTHON_VERSION")
    fi
    say "using $PYTHON"
}

make_venv() {
    HINT="The environment at $VENV could not be made; delete that folder and try again."
    if [ "$PYTHON" != "$VENV/bin/python" ]; then
        rm -rf "$VENV"  # a half-made environment from an interrupted run is made again
        "$PYTHON" -m venv "$VENV"
    fi
    HINT="pip could not reach the package index; check the network or proxy."
    pip_install -q -c "$CONSTRAINTS" pip
    PIP_FLAGS="$PIP_FLAGS --resume-retries 5"  # pip 25.1+: a dropped download resumes
}

detect_gpu() {
    TORCH_BUILD=${LLADA_STUDIO_TORCH:-}
    if [ -n "$TORCH_BUILD" ]; then
        say "torch build: $TORCH_BUILD (from LLADA_STUDIO_TORCH)"
        return
    fi
    if [ "$OS" = Darwin ]; then
        TORCH_BUILD=default  # PyPI's macOS build has the Apple GPU (MPS)
        say "Apple Silicon: torch with the Apple GPU (MPS)"
        return
    fi
    driver=""
    if command -v nvidia-smi >/dev/null 2>&1; then
        driver=$(nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>/dev/null | head -n 1 || true)
    fi
    if [ -z "$driver" ]; then
        TORCH_BUILD=cpu
        say "no NVIDIA GPU found: torch for the CPU (jobs take minutes each)"
        return
    fi
    capability=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -n 1 || true)
    TORCH_BUILD=$(choose_cuda_build "${driver%%.*}" "$capability")
    if [ "$TORCH_BUILD" = cpu ]; then
        say "warning: NVIDIA driver $driver is older than 560, so torch cannot use the GPU; update the driver (580 or newer) and run this installer again."
    fi
    say "NVIDIA driver $driver, compute capability ${capability:-unknown}: torch build $TORCH_BUILD"
}

# The newest CUDA build the driver runs; cards older than Turing (compute 7.5) stop at cu126.
choose_cuda_build() {
    driver_major=$1
    old_card=no
    case "$2" in [1-6].* | 7.[0-4]) old_card=yes ;; esac
    if [ "$driver_major" -ge 580 ] && [ "$old_card" = no ]; then echo cu130
    elif [ "$driver_major" -ge 570 ] && [ "$old_card" = no ]; then echo cu128
    elif [ "$driver_major" -ge 560 ]; then echo cu126
    else echo cpu
    fi
}

install_torch() {
    case "$TORCH_BUILD" in
        default) wanted="$TORCH_VERSION" ;;
        cpu | cu126 | cu128 | cu130) wanted="$TORCH_VERSION+$TORCH_BUILD" ;;
        *) fail "LLADA_STUDIO_TORCH must be cpu, cu126, cu128, cu130 or default, not $TORCH_BUILD." ;;
    esac
    have=$("$VENV/bin/python" -c 'import torch; print(torch.__version__)' 2>/dev/null || true)
    if [ ! -e "$VENV/.installing-torch" ] && { [ "$have" = "$wanted" ] ||
        { [ "$TORCH_BUILD" = default ] && [ "${have%%+*}" = "$TORCH_VERSION" ]; }; }; then
        say "torch $have is installed"
        return
    fi
    index=${LLADA_STUDIO_TORCH_INDEX:-}
    if [ -z "$index" ] && [ "$TORCH_BUILD" != default ]; then
        index="$TORCH_INDEX_BASE/$TORCH_BUILD"
    fi
    HINT="torch $wanted could not be installed; check the network (the CUDA build is about 3 GB; a rerun resumes)."
    if [ -n "$index" ] && [ "$index" != pip ]; then
        guarded_install torch -c "$CONSTRAINTS" --extra-index-url "$index" "torch==$wanted"
    else
        guarded_install torch -c "$CONSTRAINTS" "torch==$wanted"
    fi
}

install_app() {
    HINT="The app's packages could not be installed; check the network, then run again."
    guarded_install app -c "$CONSTRAINTS" -r "$APP/installers/requirements.txt"
    # The app itself, linked to its folder: no second copy, and its version for results and doctor.
    pip_install -q --no-deps --no-build-isolation -e "$APP"
}

# pip install with a marker that lives while pip runs: a marker left by an interrupted run means
# packages may be half unpacked, so this run reinstalls them instead of trusting what is there.
guarded_install() {
    marker="$VENV/.installing-$1"
    shift
    if [ -e "$marker" ]; then
        say "the last run stopped while installing these packages: installing them again"
        pip_install --force-reinstall "$@"
    else
        touch "$marker"
        pip_install "$@"
    fi
    rm -f "$marker"
}

make_launcher() {
    HINT="The launcher could not be written; check the permissions of your home folder."
    LAUNCHER="$INSTALL_DIR/llada-studio"
    cat >"$LAUNCHER" <<EOF
#!/bin/sh
# LLaDA Studio: with no arguments it opens the window; try "llada-studio doctor" or "--help".
exec "$VENV/bin/python" "$APP/main.py" "\$@"
EOF
    chmod +x "$LAUNCHER"
    mkdir -p "$HOME/.local/bin"
    ln -sf "$LAUNCHER" "$HOME/.local/bin/llada-studio"
    if [ "$OS" = Darwin ]; then
        bundle="$HOME/Applications/LLaDA Studio.app/Contents"
        mkdir -p "$bundle/MacOS" "$bundle/Resources"
        cp "$APP/resources/icons/app.icns" "$bundle/Resources/app.icns"
        sed -e "s|@EXEC@|$(sed_escape "$LAUNCHER")|g" "$APP/installers/macos-launcher.sh" >"$bundle/MacOS/llada-studio"
        chmod +x "$bundle/MacOS/llada-studio"
        cp "$APP/installers/Info.plist" "$bundle/Info.plist"
        DESKTOP_ENTRY="$HOME/Applications/LLaDA Studio.app"
    else
        applications="${XDG_DATA_HOME:-$HOME/.local/share}/applications"
        mkdir -p "$applications"
        DESKTOP_ENTRY="$applications/llada-studio.desktop"
        sed -e "s|@EXEC@|$(sed_escape "$LAUNCHER")|g" \
            -e "s|@ICON@|$(sed_escape "$APP/resources/icons/app.svg")|g" \
            "$APP/installers/llada-studio.desktop" >"$DESKTOP_ENTRY"
        chmod +x "$DESKTOP_ENTRY"
        if command -v update-desktop-database >/dev/null 2>&1; then
            update-desktop-database "$applications" >/dev/null 2>&1 || true
        fi
    fi
    say "launcher: $DESKTOP_ENTRY, and the command $HOME/.local/bin/llada-studio"
}

check_install() {
    HINT="The environment is incomplete; run the installer again."
    "$VENV/bin/python" -c 'import torch, PySide6, huggingface_hub' || fail "the installed packages do not import."
    "$VENV/bin/python" "$APP/main.py" doctor || true  # no model yet is normal right after install
    printf '%s\n' "torch=$TORCH_BUILD" "source=$APP" >"$INSTALL_DIR/installed.txt"
    STEP=""
    say ""
    say "LLaDA Studio is installed. Next, download the model (about 60 GB; --variant fp8 for 33 GB):"
    say "  $LAUNCHER download"
    say "then open LLaDA Studio from your applications, or run $LAUNCHER"
}

run_step check_system
run_step get_source
run_step find_python
run_step make_venv
run_step detect_gpu
run_step install_torch
run_step install_app
run_step make_launcher
run_step check_install
