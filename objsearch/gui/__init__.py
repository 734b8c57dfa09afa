"""The desktop app (``objsearch app``): the only package that imports PyQt6 and pyqtgraph."""
