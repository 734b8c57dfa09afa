"""The index file, format version 2: media and objects with stable ids, appended and removed in place, with
crash-safe transactions and integrity checks. See ``objsearch.catalog.hdf5`` for the layout."""

from objsearch.catalog.hdf5 import (
    FORMAT_VERSION,
    MAX_THUMBNAIL_BYTES,
    Catalog,
    CatalogWriter,
    compact,
    convert,
    repair,
)

__all__ = ["FORMAT_VERSION", "MAX_THUMBNAIL_BYTES", "Catalog", "CatalogWriter", "compact", "convert", "repair"]
