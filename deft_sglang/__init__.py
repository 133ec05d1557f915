"""deft-sglang: DeFT tree attention for SGLang decode."""
from ._version import __version__

__all__ = ["__version__"]
