"""Slack incoming webhooks: a readable Block Kit message per alert.

Example of what is posted (``fitstream alerts test team-slack`` sends one)::

    {"text": ":rotating_light: val-loss-high FIRING — digits-mlp", "blocks": [
      {"type": "header", "text": {"type": "plain_text", "text": "🚨 val-loss-high — firing"}},
      {"type": "section", "fields": [
         {"type": "mrkdwn", "text": "*Run*\\ndigits-mlp (`3f2c0d1e…`)"},
         {"type": "mrkdwn", "text": "*Severity*\\nwarning"},
         {"type": "mrkdwn", "text": "*Value*\\n0.612 (threshold 0.5)"},
         {"type": "mrkdwn", "text": "*Epoch*\\n7"}]},
      {"type": "section", "text": {"type": "mrkdwn", "text": "val_loss = 0.612 is above 0.5 for 2 epochs"}},
      {"type": "context", "elements": [{"type": "mrkdwn", "text": "`fitstream show 3f2c0d1e…`"}]}]}
"""

from __future__ import annotations

import json

from alerts.channels.base import (
    SECRET_MASKER,
    AlertMessage,
    RateLimiter,
    http_session,
    post_json,
    register_secret,
)

ICONS = {"firing": "🚨", "resolved": "✅"}


def slack_payload(message: AlertMessage) -> dict:
    icon = ICONS.get(message.state, "ℹ️")
    run = f"{message.run_name or 'run'} (`{message.run_id[:12]}`)"
    fields = [
        {"type": "mrkdwn", "text": f"*Run*\n{run}"},
        {"type": "mrkdwn", "text": f"*Severity*\n{message.severity}"},
    ]
    if message.value is not None:
        threshold = f" (threshold {message.threshold:g})" if message.threshold is not None else ""
        fields.append({"type": "mrkdwn", "text": f"*Value*\n{message.value:.4g}{threshold}"})
    if message.epoch is not None:
        fields.append({"type": "mrkdwn", "text": f"*Epoch*\n{message.epoch}"})
    title = f"{icon} {message.rule} — {message.state}" + (" (test)" if message.test else "")
    text, explained = message.summary, message.summary[:2900]
    if message.curve:
        first, last = message.curve_epochs or (None, None)
        text = f"{text}  {message.curve}"
        explained = f"{explained}\n`{message.curve}` {message.metric}, epochs {first}–{last}"
    return {
        "text": f"{icon} {message.rule} {message.state.upper()} — {message.run_name or message.run_id}: {text}",
        "blocks": [
            {"type": "header", "text": {"type": "plain_text", "text": title[:150]}},
            {"type": "section", "fields": fields},
            {"type": "section", "text": {"type": "mrkdwn", "text": explained}},
            {
                "type": "context",
                "elements": [{"type": "mrkdwn", "text": f"`fitstream show {message.run_id}`"}],
            },
        ],
    }


class SlackChannel:
    """Posts to a Slack incoming webhook URL (kept out of logs, events and the database)."""

    def __init__(self, name: str, *, url: str, rate_per_minute: int = 60) -> None:
        self.name = name
        self._url = url
        register_secret(url)
        self._session = http_session()
        self._limit = RateLimiter(rate_per_minute)

    def send(self, message: AlertMessage) -> None:
        self._limit.acquire()
        body = json.dumps(slack_payload(message)).encode()
        post_json(
            self._session,
            self._url,
            body,
            {"X-Fitstream-Idempotency-Key": message.key},
            secrets=sorted(SECRET_MASKER.secrets, key=len, reverse=True),
        )
