"""Snapshots on the node side.

* `chunker`: content-defined chunking of byte streams;
* `codec`: BLAKE3 names, zstd frames, verification;
* `cache`: the node-local disk chunk cache (also the snapshot-store's regional cache);
* `client`, `writer`, `reader`: writing snapshots to and reading them from the snapshot-store.

Submodules are imported by name, so code that needs only the pure parts never loads grpc.
"""
