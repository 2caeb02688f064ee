"""Sub-commands of the ``streamd`` CLI (one module each, discovered by streamd.cli)."""
