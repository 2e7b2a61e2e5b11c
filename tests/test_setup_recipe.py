"""The fresh-machine set-up recipe, run for real with recording stand-ins for `id`, `sudo` and
`apt-get` on PATH: the Debian step must run on every `make setup`, as root directly and as a user
through sudo, with DEBIAN_FRONTEND passed to apt-get (not taken as a command name). CI's script
must run exactly the README's two commands."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _stand_in(bin_dir: Path, name: str, body: str) -> None:
    path = bin_dir / name
    path.write_text("#!/bin/bash\n" + body + "\n")
    path.chmod(0o755)


def _run_apt_step(tmp_path: Path, uid: int) -> list[str]:
    """Run `make setup-apt` with stand-ins; return the recorded command lines."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "calls.log"
    record = f'echo "$(basename "$0") DEBIAN_FRONTEND=${{DEBIAN_FRONTEND:-}} $*" >> {log}'
    _stand_in(bin_dir, "id", f'[ "$1" = "-u" ] && echo {uid} || /usr/bin/id "$@"')
    _stand_in(bin_dir, "apt-get", record)
    # sudo records itself, then runs its command (as real sudo would, minus the privilege).
    _stand_in(bin_dir, "sudo", record + '\nexec "$@"')
    env = {k: v for k, v in os.environ.items() if k != "DEBIAN_FRONTEND"}
    env["PATH"] = f"{bin_dir}:{os.environ['PATH']}"
    proc = subprocess.run(["make", "-s", "-C", str(REPO), "setup-apt"], env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return log.read_text().splitlines()


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_apt_step_as_root_runs_apt_get_directly(tmp_path):
    calls = _run_apt_step(tmp_path, uid=0)
    assert calls[0] == "apt-get DEBIAN_FRONTEND= update"
    assert calls[1] == ("apt-get DEBIAN_FRONTEND=noninteractive install -y --no-install-recommends "
                        "libusb-1.0-0 libosmesa6 libgl1")
    assert len(calls) == 2


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_apt_step_as_user_goes_through_sudo(tmp_path):
    calls = _run_apt_step(tmp_path, uid=1000)
    assert calls == [
        "sudo DEBIAN_FRONTEND= apt-get update",
        "apt-get DEBIAN_FRONTEND= update",
        "sudo DEBIAN_FRONTEND= env DEBIAN_FRONTEND=noninteractive apt-get install -y "
        "--no-install-recommends libusb-1.0-0 libosmesa6 libgl1",
        "apt-get DEBIAN_FRONTEND=noninteractive install -y --no-install-recommends libusb-1.0-0 libosmesa6 libgl1",
    ]


def test_setup_has_no_skip_branch():
    """Every install step runs on every `make setup`: no stamp files, no dpkg/venv presence checks."""
    makefile = (REPO / "Makefile").read_text()
    recipe = makefile[makefile.index("setup:"):makefile.index("\ntest:")]
    for pattern in (r"dpkg -s", r"test -d", r"\.installed", r"\.apt\b", r"\|\|"):
        assert not re.search(pattern, recipe), pattern


def test_ci_runs_exactly_the_readme_commands():
    readme = (REPO / "README.md").read_text()
    block = readme[readme.index("## Set up and test"):]
    block = block[block.index("```bash") + len("```bash"):]
    block = block[:block.index("```")]
    readme_cmds = [line.split("#")[0].strip() for line in block.strip().splitlines()]
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    ci_cmds = [line.strip() for line in ci if line.strip() and not line.startswith(("#", "set ", "cd "))]
    assert ci_cmds == readme_cmds == ["make setup", "make test"]
