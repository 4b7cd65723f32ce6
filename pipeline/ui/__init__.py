"""``fitstream ui``: a read-only web dashboard of the training history, live over server-sent events."""
