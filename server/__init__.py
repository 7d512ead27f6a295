"""HTTP inference server for the BDDM vocoder: `python -m server`, or `create_app(settings)` for ASGI hosts."""

from .app import create_app
from .settings import Settings

__all__ = ["Settings", "create_app"]
