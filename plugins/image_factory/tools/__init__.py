"""Configuration tools: how a spec's ``configure:`` section is applied to the builder instance."""

from __future__ import annotations

from image_factory.faults import checkpoint
from image_factory.tools.command import run_command_template
from image_factory.tools.shell import run_shell_role

__all__ = ["apply"]


def apply(hook, configure, build) -> list[str]:
    """Apply ``configure`` (the spec's section) over ``hook``; returns the remote output lines."""
    checkpoint("before:configure")
    if configure.tool == "shell":
        lines = run_shell_role(hook, configure.server_role, build)
    else:
        template = configure.command or build.settings.servermaker_command
        lines = run_command_template(hook, template, configure, build)
    checkpoint("after:configure")
    return lines
