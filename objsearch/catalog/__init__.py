"""The index file, format version 2: media and objects with stable ids, appended and removed in place, with
crash-safe transactions and integrity checks. The only package of objsearch that imports h5py; the layout is in
``objsearch.catalog.schema``, which also lists the modules."""

from objsearch.catalog.locking import repair
from objsearch.catalog.maintenance import compact, convert
from objsearch.catalog.reader import Catalog
from objsearch.catalog.schema import FORMAT_VERSION, MAX_THUMBNAIL_BYTES
from objsearch.catalog.view import CatalogView
from objsearch.catalog.writer import CatalogWriter

__all__ = ["FORMAT_VERSION", "MAX_THUMBNAIL_BYTES", "Catalog", "CatalogView", "CatalogWriter", "compact", "convert",
           "repair"]
