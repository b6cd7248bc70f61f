"""The Zarr store: format, chunk I/O, integrity and repair, placement, fingerprints, the lock and claims."""
