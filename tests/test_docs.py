"""Every hook is documented (Datasette's rule) and in the README's hook table; every shipped
config validates and every key in the example config is one the loader knows."""
from __future__ import annotations

import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest

from gateway import hookspecs
from gateway.plugins import PluginManager

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
SENTENCES = ("Stops at the first decisive verdict.", "Stops at the first result that is not None.",
             "All implementations are called; results are collected.",
             "All implementations are called; results are ignored.")
HOOKS = sorted(name for name in dir(hookspecs) if name.startswith("gateway_"))


def test_every_hook_is_registered():
    pm = PluginManager()
    assert sorted(name for name in dir(pm.hook) if name.startswith("gateway_")) == HOOKS
    assert len(HOOKS) >= 14


@pytest.mark.parametrize("name", HOOKS)
def test_hook_is_documented(name):
    spec = getattr(hookspecs, name)
    doc = inspect.getdoc(spec) or ""
    params = list(inspect.signature(spec).parameters)
    assert doc, f"{name} has no docstring"
    for param in params:
        assert f":param {param}:" in doc, f"{name}: :param {param}: missing"
    assert ":returns:" in doc, name
    assert "Example::" in doc and "@hookimpl" in doc, name
    assert sum(sentence in doc for sentence in SENTENCES) == 1, f"{name}: calling-convention sentence"
    for hint in inspect.get_annotations(spec).values():
        assert hint, name


@pytest.mark.parametrize("name", HOOKS)
def test_hook_is_in_readme_table(name):
    params = ", ".join(inspect.signature(getattr(hookspecs, name)).parameters)
    assert f"`{name}({params})`" in README, f"README hook table lacks `{name}({params})`"


def test_readme_table_lists_no_unknown_hooks():
    listed = set(re.findall(r"`(gateway_[a-z_]+)\(", README))
    assert listed <= set(HOOKS)


def test_readme_starts_with_the_two_commands():
    blocks = re.findall(r"```sh\n(.*?)```", README, re.S)
    assert blocks[0].strip().count("\n") == 0 and "ses-gateway run -c config/gateway.toml" in blocks[0]
    assert blocks[1].strip() == "bash .ci/run"
    ci = (ROOT / ".ci" / "run").read_text()
    assert "pytest" in ci


@pytest.mark.parametrize("path", sorted((ROOT / "config").glob("*.toml")), ids=lambda p: p.name)
def test_shipped_config_validates(path, tmp_path):
    result = subprocess.run([sys.executable, "-m", "gateway", "check-config", "-c", str(path)],
                            capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert result.returncode == 0, result.stderr


def test_every_example_key_is_known():
    """Uncommenting any documented key of config/gateway.toml still gives a valid config
    (so the example never documents a key the loader would call unknown)."""
    from gateway.config import parse

    text = (ROOT / "config" / "gateway.toml").read_text()
    lines = text.splitlines()
    checked = 0
    for index, line in enumerate(lines):
        match = re.match(r"^# ([a-z_0-9]+) = (.+?)(\s+#.*)?$", line)
        if not match:
            continue
        key, value = match.group(1), match.group(2)
        if key in ("tls_cert", "tls_key", "key_file", "selector", "address", "mode", "password",
                   "smarthost_username", "smarthost_password", "smarthost", "password_hash",
                   "selector2", "key_file2"):
            continue                 # need companion keys or files: covered by dedicated tests
        trial = list(lines)
        trial[index] = f"{key} = {value}"
        parse("\n".join(trial), path="example.toml", env={"APP_SMTP_PASSWORD": "x", "SMARTHOST_PASSWORD": "y",
                                                          "SES_GATEWAY_ADMIN_TOKEN": "z"})
        checked += 1
    assert checked >= 30
