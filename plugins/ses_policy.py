"""ses_policy: SES policy: the rules of DESIGN §4 (issue 4).

Not implemented yet: registered so the plugin name is reserved.
"""
from __future__ import annotations
