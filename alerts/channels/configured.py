"""The channels a rules file defines, built with their URLs and secrets.

A channel's URL (and a webhook's HMAC secret) is read from the environment variable or the
secrets file the rules file names, never from the rules file itself and never logged; an error
says where it looked, never the value.
"""

from __future__ import annotations

import os

from alerts.channels.base import Channel
from alerts.channels.slack import SlackChannel
from alerts.channels.webhook import WebhookChannel
from alerts.rules_file import RulesFile
from pipeline.errors import ConfigurationError


def build_channels(rules: RulesFile, environ: dict[str, str] | None = None) -> dict[str, Channel]:
    """Channels with their URLs and secrets read from the environment or secrets files (never from
    the rules file, never logged). Read once: restart the alerter after rotating a secret."""
    environ = dict(os.environ if environ is None else environ)
    channels: dict[str, Channel] = {}
    for name, spec in rules.channels.items():
        url = _secret(name, "URL", spec.url_env, spec.url_file, environ)
        assert url is not None
        if spec.type == "slack":
            channels[name] = SlackChannel(name, url=url, rate_per_minute=spec.rate_per_minute)
        else:
            secret = _secret(name, "secret", spec.secret_env, spec.secret_file, environ)
            channels[name] = WebhookChannel(
                name, url=url, secret=secret, rate_per_minute=spec.rate_per_minute
            )
    return channels


def _secret(
    channel: str, what: str, variable: str | None, path: str | None, environ: dict[str, str]
) -> str | None:
    """A channel's URL or secret from its variable or file; an error names where, never the value."""
    if variable is not None:
        value = environ.get(variable)
        if not value:
            raise ConfigurationError(
                f"channel {channel!r}: environment variable {variable} (its {what}) is not set"
            )
        return value
    if path is None:
        return None
    try:
        with open(path, encoding="utf-8") as handle:
            value = handle.read().strip()
    except OSError as exc:
        raise ConfigurationError(
            f"channel {channel!r}: cannot read its {what} from {path}: {exc.strerror or exc}"
        ) from None
    except UnicodeDecodeError:
        raise ConfigurationError(f"channel {channel!r}: {path} (its {what}) is not UTF-8 text") from None
    if not value:
        raise ConfigurationError(f"channel {channel!r}: {path} (its {what}) is empty")
    return value
