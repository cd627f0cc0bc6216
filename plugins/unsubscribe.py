"""unsubscribe: One-click unsubscribe and open/click tracking (issue 6).

Not implemented yet: registered so the plugin name is reserved.
"""
from __future__ import annotations
