"""callbacks: Durable, signed event webhooks (issue 5).

Not implemented yet: registered so the plugin name is reserved.
"""
from __future__ import annotations
