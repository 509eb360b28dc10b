"""The competition's data: reading, validating, caching, and channel building."""
