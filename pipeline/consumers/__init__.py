"""Consumers of the event stream: the shared consume loop and the handlers it runs.

:mod:`~pipeline.consumers.base` holds the loop (its parts: ``handler``, ``batch_commit``,
``leadership``, ``read_ahead``) and :mod:`~pipeline.consumers.shards` runs one loop per stream shard.
The handlers: :mod:`~pipeline.consumers.recorder` (events into SQL; its rows, runs merge and sweep
writes in ``recorder_rows``, ``recorder_runs``, ``recorder_sweeps``), the promoter and the pruner.
"""
