"""Built-in plugins of ses-gateway, installed as ``gateway_plugins``.

Each is an ordinary pluggy plugin (a module with ``gateway_*`` impls), registered by
:mod:`gateway.plugins` with the same call as third-party entry points, and can be disabled
with ``[plugins] disabled = ["name"]``.
"""
