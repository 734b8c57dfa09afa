"""objsearch: real-time, object-level reverse image search with a YOLO detector's own features."""

__version__ = "0.1.0"
