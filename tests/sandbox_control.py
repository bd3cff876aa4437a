"""Controls of the Asterisk sandbox process for fault tests."""

import asyncio
import os
import signal
import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "asterisk-sandbox"
STATE = Path(os.environ.get("ASTERISK_SANDBOX_DIR", "/var/tmp/conference-asterisk"))


def _script(*args):
    result = subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise AssertionError(f"asterisk-sandbox {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")


async def restart_asterisk():
    """Restart the sandbox Asterisk cleanly ('core stop now': it hangs up every call first)."""
    await asyncio.to_thread(_script, "restart")


async def crash_asterisk():
    """Kill the sandbox Asterisk with SIGKILL (no hangups sent), then start it again."""
    pid = int((STATE / "asterisk.pid").read_text().strip())
    os.kill(pid, signal.SIGKILL)
    for _ in range(100):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        await asyncio.sleep(0.05)
    await asyncio.to_thread(_script, "start")
