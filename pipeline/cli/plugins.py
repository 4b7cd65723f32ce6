"""Command groups that also offer commands registered by other packages (entry points).

``pipeline`` never imports ``workers`` or ``alerts``; their commands register themselves as
entry points (see pyproject.toml) and are loaded only when used.
"""

from __future__ import annotations

from importlib.metadata import entry_points

import click


class PluginGroup(click.Group):
    """A click group that adds the commands of the entry-point group ``plugin_group``."""

    plugin_group = ""

    def _plugins(self) -> dict[str, object]:
        return {ep.name: ep for ep in entry_points(group=self.plugin_group)} if self.plugin_group else {}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(self._plugins()))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        command = super().get_command(ctx, name)
        if command is None and name in (plugins := self._plugins()):
            command = plugins[name].load()  # type: ignore[attr-defined]
        return command


class ConsumeGroup(PluginGroup):
    plugin_group = "fitstream.consume"
