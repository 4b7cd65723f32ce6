"""Alerts: the rules file and its state machine (``rules_file``, ``rules``), the alerter that
evaluates them per event (``alerter``), the outbox deliverer that posts to Slack or a signed
webhook with retries (``outbox``, ``channels``), alert sparklines (``curves``) and
``fitstream alerts`` / ``fitstream consume alerter`` (``cli``)."""
