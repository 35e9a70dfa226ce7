"""Per-format contracts: file names, I/O names and shapes, metadata keys, runtime configs
and spec checks that a target (the writer) and its runtime (the reader) both import.
No torch; never imports targets/ or runtime/."""
