"""Every module imports on its own in a fresh interpreter (aiohttp's check): no import cycles,
no module that only works because another was imported first."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def modules() -> list[str]:
    names = []
    for path in sorted((ROOT / "gateway").rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__main__":
            continue
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names.append(".".join(parts))
    names += [f"gateway_plugins.{p.stem}" for p in sorted((ROOT / "plugins").glob("*.py")) if p.stem != "__init__"]
    return names


def test_each_module_imports_alone():
    found = modules()
    assert len(found) > 50
    # All at once (2 cores): each in its own interpreter, with warnings as errors.
    procs = {name: subprocess.Popen([sys.executable, "-W", "error", "-c", f"import {name}"],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
             for name in found}
    failures = {}
    for name, proc in procs.items():
        _, err = proc.communicate(timeout=120)
        if proc.returncode != 0:
            failures[name] = err.strip().splitlines()[-1] if err.strip() else f"exit {proc.returncode}"
    assert failures == {}
