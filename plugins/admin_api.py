"""admin_api: Admin HTTP API under /v1 (issue 4).

Not implemented yet: registered so the plugin name is reserved.
"""
from __future__ import annotations
