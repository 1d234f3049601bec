"""Change events that sources deliver to the store.

The types live in `xdsd.model.store` (the model must not import sources/);
they are re-exported here for source implementations.
"""

from __future__ import annotations

from xdsd.model.store import ConfigChange, FileContent

__all__ = ["ConfigChange", "FileContent"]
