"""IdleKV: idle-time KV-cache repair on a tiered (device + host) KV cache."""

__version__ = "0.1.0"
