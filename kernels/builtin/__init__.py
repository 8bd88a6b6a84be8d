"""Built-in attention variants: every public module here registers its variants on import."""
