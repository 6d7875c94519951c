"""hepdeploy: make trained HEP networks ready to serve on GPU coprocessors (Triton/SONIC)."""
from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["__version__"]
