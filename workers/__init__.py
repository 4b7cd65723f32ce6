"""Celery app and thin training tasks (built in a later issue)."""
