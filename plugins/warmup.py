"""warmup: Per-IP warm-up (issue 7).

Not implemented yet: registered so the plugin name is reserved.
"""
from __future__ import annotations
