"""``Detections`` moved to ``objsearch.types``; this name stays for existing imports."""

from objsearch.types import Detections

__all__ = ["Detections"]
