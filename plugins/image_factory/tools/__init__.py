"""Configuration tools: how a spec's ``configure:`` section is applied to the builder instance."""

from __future__ import annotations

from image_factory.tools.command import run_command_template
from image_factory.tools.shell import run_shell_role

__all__ = ["apply"]


def apply(hook, configure, build) -> list[str]:
    """Apply ``configure`` (the spec's section) over ``hook``; returns the remote output lines."""
    if configure.tool == "shell":
        return run_shell_role(hook, configure.server_role, build)
    template = configure.command or build.settings.servermaker_command
    return run_command_template(hook, template, configure, build)
