"""Alert rules, engine and notifiers (built in a later issue)."""
