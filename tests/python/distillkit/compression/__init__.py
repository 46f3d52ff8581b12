# Simplified: upstream __init__ lazily re-exports names; this vendored copy imports nothing.
