"""ses-gateway: an SMTP gateway with cloud-SES semantics.

Public API for plugin authors: ``hookimpl``, ``Verdict``, ``Reply``, ``StashKey``.
"""
from __future__ import annotations

import pluggy

from gateway.results import Reply, Verdict
from gateway.session import StashKey

__version__ = "0.1.0"

hookimpl = pluggy.HookimplMarker("ses_gateway")

__all__ = ["hookimpl", "Verdict", "Reply", "StashKey", "__version__"]
