"""The Celery side: the app and its queues (``celery_app``), thin tasks (``tasks``) over
``pipeline.training.run_job``, the prefork pool and GPU handover, job submission and the
``fitstream submit|cancel|worker|status`` commands."""
