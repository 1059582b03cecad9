import subprocess
import sys

from lienthong.settings import PROJECT_ROOT


def test_the_code_keeps_the_house_style() -> None:
    """The settings are pyproject.toml's [tool.ruff]: long lines and unused names fail here, not in review."""
    checked = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", str(PROJECT_ROOT)],
                             capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=120, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr
