"""`cbmctl inspect`: a Textual app over a run directory or a cache (no backbone is ever loaded)."""
