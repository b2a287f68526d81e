# LLaDA Studio installer for Windows. Run it again at any time to upgrade in place; an install
# that was interrupted picks up where it stopped.
#
#   powershell -ExecutionPolicy Bypass -File install.ps1
#
# It needs only this script: it uses a Python 3.11+ that has venv and pip when there is one, and
# otherwise fetches uv and a standalone Python. It detects the GPU and driver, installs the
# matching torch build (PyPI's torch for Windows has no GPU support, so CUDA builds come from
# PyTorch's own index), then the app's locked packages, and adds a Start menu entry.
# Settings, all optional (environment variables, as in install.sh):
#
#   LLADA_STUDIO_HOME         where to install (default: %LOCALAPPDATA%\LLaDA Studio)
#   LLADA_STUDIO_SOURCE       the app's source: a folder or a git URL (default: the checkout this
#                             script sits in, else LLADA_STUDIO_REPO)
#   LLADA_STUDIO_PYTHON       the Python to build the environment with (default: found, else uv's)
#   LLADA_STUDIO_TORCH        cpu, cu126, cu128, cu130 or default instead of detecting the GPU
#   LLADA_STUDIO_TORCH_INDEX  the package index for torch, or "pip" to use pip's own settings
#
# Steps are named (Invoke-Step NAME); install.sh has the same steps under the same names.

$ErrorActionPreference = 'Stop'
Set-StrictMode -Version 3.0

$TorchVersion = '2.13.0'
$UvVersion = '0.13.9'
$PythonVersion = '3.12'
$MinFreeGB = 8
$TorchIndexBase = 'https://download.pytorch.org/whl'
$Repo = $env:LLADA_STUDIO_REPO  # the project's public git URL, once it has one
$PipFlags = @('--disable-pip-version-check', '--no-input', '--retries', '10', '--timeout', '60')

$script:Step = ''
$script:Hint = ''

function Say([string]$Text) { Write-Host $Text }

function Fail([string]$Text) { throw $Text }

# Runs a program; a non-zero exit status becomes an error naming what failed.
function Invoke-Native([string]$What, [string]$Program, [string[]]$Arguments) {
    & $Program @Arguments
    if ($LASTEXITCODE -ne 0) { Fail "$What failed (exit status $LASTEXITCODE)." }
}

function Invoke-Pip([string[]]$Arguments) {
    $all = @('-m', 'pip', 'install') + $script:PipFlags + $Arguments
    Invoke-Native 'pip' $script:VenvPython $all
}

function Invoke-Step([string]$Name) {
    $script:Step = $Name
    $script:Hint = ''
    Say "==> [$Name]"
    & $Name
}

# A Python is suitable when it is 3.11+ and can make a virtual environment with pip in it.
function Test-Python([string]$Python) {
    & $Python -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>$null
    if ($LASTEXITCODE -ne 0) { return $false }
    $probe = Join-Path $script:InstallDir 'probe-venv'
    if (Test-Path $probe) { Remove-Item -Recurse -Force $probe }
    & $Python -m venv $probe 2>$null | Out-Null
    $ok = ($LASTEXITCODE -eq 0) -and (Test-Path (Join-Path $probe 'Scripts\python.exe'))
    if (Test-Path $probe) { Remove-Item -Recurse -Force $probe }
    return $ok
}

function check_system {
    $script:Hint = 'This installer supports 64-bit Windows 10 and 11.'
    if (-not [Environment]::Is64BitOperatingSystem) { Fail 'LLaDA Studio needs 64-bit Windows.' }
    $default = Join-Path $env:LOCALAPPDATA 'LLaDA Studio'
    $script:InstallDir = if ($env:LLADA_STUDIO_HOME) { $env:LLADA_STUDIO_HOME } else { $default }
    $script:Venv = Join-Path $script:InstallDir 'env'
    $script:VenvPython = Join-Path $script:Venv 'Scripts\python.exe'
    $script:App = Join-Path $script:InstallDir 'app'
    $script:Hint = "Check that you may write to $($script:InstallDir), or set LLADA_STUDIO_HOME to another folder."
    New-Item -ItemType Directory -Force -Path $script:InstallDir | Out-Null
    $drive = (Get-Item $script:InstallDir).PSDrive
    $freeGB = [math]::Floor($drive.Free / 1GB)
    if ($freeGB -lt $MinFreeGB) {
        Fail "The install needs $MinFreeGB GB free at $($script:InstallDir), which has $freeGB GB; free some space or set LLADA_STUDIO_HOME to another disk."
    }
    Say "installing into $($script:InstallDir) (Windows, $env:PROCESSOR_ARCHITECTURE)"
}

function get_source {
    $source = $env:LLADA_STUDIO_SOURCE
    $here = Split-Path -Parent $PSScriptRoot
    if (-not $source -and $PSScriptRoot -and (Test-Path (Join-Path $here 'main.py')) -and
        (Test-Path (Join-Path $here 'installers\constraints.txt'))) {
        $source = $here
    }
    if (-not $source) { $source = $Repo }
    if (-not $source) { Fail "Set LLADA_STUDIO_SOURCE to the app's git URL or source folder." }
    $script:Hint = "Check that $source can be read (for a git URL: git is installed and the network is up)."
    $new = "$($script:App).new"
    $old = "$($script:App).old"
    if (Test-Path $new) { Remove-Item -Recurse -Force $new }
    if (Test-Path $source -PathType Container) {
        $skip = @('.git', '.venv', '.whl', '__pycache__', '.pytest_cache', '.ruff_cache', '.tiny')
        & robocopy $source $new /E /XD @skip /XF '*.pyc' /NFL /NDL /NJH /NJS /NP | Out-Null
        if ($LASTEXITCODE -ge 8) { Fail "Copying $source failed (robocopy status $LASTEXITCODE)." }
    }
    else {
        if (-not (Get-Command git -ErrorAction SilentlyContinue)) { Fail "git is needed to fetch $source; install Git for Windows." }
        Invoke-Native 'git clone' 'git' @('clone', '--quiet', '--depth', '1', $source, $new)
    }
    if (-not (Test-Path (Join-Path $new 'main.py'))) { Fail "$source does not hold LLaDA Studio (no main.py)." }
    if (Test-Path $old) { Remove-Item -Recurse -Force $old }
    if (Test-Path $script:App) { Move-Item $script:App $old }
    Move-Item $new $script:App
    if (Test-Path $old) { Remove-Item -Recurse -Force $old }
    $script:Constraints = Join-Path $script:App 'installers\constraints.txt'
}

function find_python {
    $script:Hint = 'Install Python 3.11 or newer from python.org, or let the installer fetch one: check the network.'
    $script:Python = ''
    if ($env:LLADA_STUDIO_PYTHON) {
        if (-not (Test-Python $env:LLADA_STUDIO_PYTHON)) { Fail "LLADA_STUDIO_PYTHON ($env:LLADA_STUDIO_PYTHON) is not a Python 3.11+ with venv and pip." }
        $script:Python = $env:LLADA_STUDIO_PYTHON
    }
    elseif ((Test-Path $script:VenvPython) -and (& $script:VenvPython -m pip --version 2>$null)) {
        $script:Python = $script:VenvPython
        Say "keeping the environment's Python"
        return
    }
    else {
        foreach ($version in @('3.13', '3.12', '3.11')) {
            if (-not (Get-Command py -ErrorAction SilentlyContinue)) { break }
            $found = & py "-$version" -c 'import sys; print(sys.executable)' 2>$null
            if ($LASTEXITCODE -eq 0 -and $found -and (Test-Python $found)) { $script:Python = $found; break }
        }
        $onPath = Get-Command python -ErrorAction SilentlyContinue
        if (-not $script:Python -and $onPath -and $onPath.Source -notlike '*WindowsApps*' -and (Test-Python $onPath.Source)) {
            $script:Python = $onPath.Source  # the Microsoft Store stub in WindowsApps is not a Python
        }
    }
    if (-not $script:Python) {
        Say "no suitable Python here: fetching uv $UvVersion and Python $PythonVersion"
        $uv = Join-Path $script:InstallDir 'uv\uv.exe'
        if (-not (Test-Path $uv)) {
            $installer = Join-Path $script:InstallDir 'uv-install.ps1'
            Invoke-WebRequest -UseBasicParsing -Uri "https://astral.sh/uv/$UvVersion/install.ps1" -OutFile $installer
            $env:UV_INSTALL_DIR = Join-Path $script:InstallDir 'uv'
            $env:UV_NO_MODIFY_PATH = '1'
            Invoke-Native 'the uv installer' 'powershell' @('-NoProfile', '-ExecutionPolicy', 'Bypass', '-File', $installer)
        }
        $env:UV_PYTHON_INSTALL_DIR = Join-Path $script:InstallDir 'python'
        Invoke-Native 'uv python install' $uv @('python', 'install', $PythonVersion)
        $script:Python = (& $uv python find $PythonVersion).Trim()
    }
    Say "using $($script:Python)"
}

function make_venv {
    $script:Hint = "The environment at $($script:Venv) could not be made; delete that folder and try again."
    if ($script:Python -ne $script:VenvPython) {
        if (Test-Path $script:Venv) { Remove-Item -Recurse -Force $script:Venv }  # half-made by an interrupted run
        Invoke-Native 'python -m venv' $script:Python @('-m', 'venv', $script:Venv)
    }
    $script:Hint = 'pip could not reach the package index; check the network or proxy.'
    Invoke-Pip @('-q', '-c', $script:Constraints, 'pip')
    $script:PipFlags += @('--resume-retries', '5')  # pip 25.1+: a dropped download resumes
}

function detect_gpu {
    $script:TorchBuild = $env:LLADA_STUDIO_TORCH
    if ($script:TorchBuild) {
        Say "torch build: $($script:TorchBuild) (from LLADA_STUDIO_TORCH)"
        return
    }
    $driver = ''
    if (Get-Command nvidia-smi -ErrorAction SilentlyContinue) {
        $driver = (& nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>$null | Select-Object -First 1)
    }
    if (-not $driver) {
        $script:TorchBuild = 'cpu'
        Say 'no NVIDIA GPU found: torch for the CPU (jobs take minutes each)'
        return
    }
    $capability = (& nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>$null | Select-Object -First 1)
    $script:TorchBuild = Select-CudaBuild ([int]($driver.Split('.')[0])) "$capability"
    if ($script:TorchBuild -eq 'cpu') {
        Say "warning: NVIDIA driver $driver is older than 560, so torch cannot use the GPU; update the driver (580 or newer) and run this installer again."
    }
    Say "NVIDIA driver $driver, compute capability $capability`: torch build $($script:TorchBuild)"
}

# The newest CUDA build the driver runs; cards older than Turing (compute 7.5) stop at cu126.
function Select-CudaBuild([int]$DriverMajor, [string]$Capability) {
    $oldCard = $false
    if ($Capability -match '^(\d+)\.(\d+)') {
        $oldCard = ([int]$Matches[1] -lt 7) -or (([int]$Matches[1] -eq 7) -and ([int]$Matches[2] -lt 5))
    }
    if ($DriverMajor -ge 580 -and -not $oldCard) { return 'cu130' }
    if ($DriverMajor -ge 570 -and -not $oldCard) { return 'cu128' }
    if ($DriverMajor -ge 560) { return 'cu126' }
    return 'cpu'
}

# pip install with a marker that lives while pip runs: a marker left by an interrupted run means
# packages may be half unpacked, so this run reinstalls them instead of trusting what is there.
function Invoke-GuardedInstall([string]$Name, [string[]]$Arguments) {
    $marker = Join-Path $script:Venv ".installing-$Name"
    if (Test-Path $marker) {
        Say 'the last run stopped while installing these packages: installing them again'
        Invoke-Pip (@('--force-reinstall') + $Arguments)
    }
    else {
        New-Item -ItemType File -Force -Path $marker | Out-Null
        Invoke-Pip $Arguments
    }
    Remove-Item -Force $marker
}

function install_torch {
    if ($script:TorchBuild -eq 'default') { $wanted = $TorchVersion }
    elseif ($script:TorchBuild -in @('cpu', 'cu126', 'cu128', 'cu130')) { $wanted = "$TorchVersion+$($script:TorchBuild)" }
    else { Fail "LLADA_STUDIO_TORCH must be cpu, cu126, cu128, cu130 or default, not $($script:TorchBuild)." }
    $have = (& $script:VenvPython -c 'import torch; print(torch.__version__)' 2>$null)
    $interrupted = Test-Path (Join-Path $script:Venv '.installing-torch')
    if (-not $interrupted -and ($have -eq $wanted -or ($script:TorchBuild -eq 'default' -and "$have".Split('+')[0] -eq $TorchVersion))) {
        Say "torch $have is installed"
        return
    }
    $index = $env:LLADA_STUDIO_TORCH_INDEX
    if (-not $index -and $script:TorchBuild -ne 'default') { $index = "$TorchIndexBase/$($script:TorchBuild)" }
    $script:Hint = "torch $wanted could not be installed; check the network (the CUDA build is about 3 GB; a rerun resumes)."
    $arguments = @('-c', $script:Constraints, "torch==$wanted")
    if ($index -and $index -ne 'pip') { $arguments = @('--extra-index-url', $index) + $arguments }
    Invoke-GuardedInstall 'torch' $arguments
}

function install_app {
    $script:Hint = "The app's packages could not be installed; check the network, then run again."
    $requirements = Join-Path $script:App 'installers\requirements.txt'
    Invoke-GuardedInstall 'app' @('-c', $script:Constraints, '-r', $requirements)
    # The app itself, linked to its folder: no second copy, and its version for results and doctor.
    Invoke-Pip @('-q', '--no-deps', '--no-build-isolation', '-e', $script:App)
}

function make_launcher {
    $script:Hint = 'The Start menu entry could not be written; check the permissions of your profile folder.'
    $script:Launcher = Join-Path $script:InstallDir 'llada-studio.cmd'
    $cmd = "@echo off`r`n`"$($script:VenvPython)`" `"$($script:App)\main.py`" %*`r`n"
    Set-Content -Path $script:Launcher -Value $cmd -Encoding ASCII -NoNewline
    $programs = [Environment]::GetFolderPath('Programs')  # the Start menu's Programs folder
    $shortcut = Join-Path $programs 'LLaDA Studio.lnk'
    $shell = New-Object -ComObject WScript.Shell
    $link = $shell.CreateShortcut($shortcut)
    $link.TargetPath = Join-Path $script:Venv 'Scripts\pythonw.exe'
    $link.Arguments = "`"$($script:App)\main.py`""
    $link.WorkingDirectory = $script:App
    $link.IconLocation = Join-Path $script:App 'resources\icons\app.ico'
    $link.Description = 'Edit, make and ask about images with LLaDA2.0-Uni'
    $link.Save()
    Say "launcher: $shortcut, and the command $($script:Launcher)"
}

function check_install {
    $script:Hint = 'The environment is incomplete; run the installer again.'
    Invoke-Native 'importing the installed packages' $script:VenvPython @('-c', 'import torch, PySide6, huggingface_hub')
    & $script:VenvPython (Join-Path $script:App 'main.py') doctor  # no model yet is normal here
    Set-Content -Path (Join-Path $script:InstallDir 'installed.txt') -Value @("torch=$($script:TorchBuild)", "source=$($script:App)")
    $script:Step = ''
    Say ''
    Say 'LLaDA Studio is installed. Next, download the model (about 60 GB; --variant fp8 for 33 GB):'
    Say "  `"$($script:Launcher)`" download"
    Say 'then open LLaDA Studio from the Start menu.'
}

try {
    Invoke-Step check_system
    Invoke-Step get_source
    Invoke-Step find_python
    Invoke-Step make_venv
    Invoke-Step detect_gpu
    Invoke-Step install_torch
    Invoke-Step install_app
    Invoke-Step make_launcher
    Invoke-Step check_install
}
catch {
    Write-Host "error: $($_.Exception.Message)" -ForegroundColor Red
    if ($script:Step) {
        Write-Host "LLaDA Studio was not installed: the step '$($script:Step)' failed. $($script:Hint)" -ForegroundColor Red
        Write-Host 'Run this installer again once that is fixed; finished steps are kept.'
    }
    exit 1
}
