"""Solution plugins: one file per documented model; importing `core.registry.discover()` loads them all."""
