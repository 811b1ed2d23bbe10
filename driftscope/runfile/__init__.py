"""The run file: its schema (every path, label, dtype, schedule), the writer (lock, safe overwrite,
checksums, chunked appends), resume from a file, and the torch-free reader (``open_run``)."""
