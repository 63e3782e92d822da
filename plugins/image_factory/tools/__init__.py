"""Configuration tools: how a spec's ``configure:`` section is applied to the builder instance."""

from __future__ import annotations

from image_factory.errors import PermanentError
from image_factory.faults import checkpoint
from image_factory.tools.ansible import run_ansible_role
from image_factory.tools.command import run_command_template
from image_factory.tools.shell import run_shell_role

__all__ = ["apply"]


def apply(hook, configure, build, target=None) -> list[str]:
    """Apply ``configure`` (the spec's section) over ``hook``; returns the remote output lines.

    ``target`` (a :class:`image_factory.remote.SSHTarget`: host, port, user and the build's key) is needed by
    the tools that open SSH connections of their own: ``ansible``.
    """
    checkpoint("before:configure")
    if configure.tool == "shell":
        lines = run_shell_role(hook, configure.server_role, build)
    elif configure.tool == "ansible":
        if target is None:
            raise PermanentError("the ansible tool connects on its own: tools.apply needs the SSH target")
        lines = run_ansible_role(hook, target, configure, build)
    else:
        template = configure.command or build.settings.servermaker_command
        lines = run_command_template(hook, template, configure, build)
    checkpoint("after:configure")
    return lines
