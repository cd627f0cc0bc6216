"""metrics: Prometheus /metrics, /healthz, /readyz details (issue 8).

Not implemented yet: registered so the plugin name is reserved.
"""
from __future__ import annotations
