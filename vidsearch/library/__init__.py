"""The library directory: SQLite catalog + per-video shards (the truth), whitening, FAISS cache.
One module per job; `Library` (library.py) ties them together."""

from .catalog import CATALOG, SCHEMA_VERSION, VideoRow
from .faiss_index import region_ids
from .files import atomic_path, content_key
from .library import Library, default_library, library_root
from .shards import REGION_FIELDS, SHARD_FIELDS

__all__ = ["CATALOG", "SCHEMA_VERSION", "VideoRow", "region_ids", "atomic_path", "content_key", "Library",
           "default_library", "library_root", "REGION_FIELDS", "SHARD_FIELDS"]
