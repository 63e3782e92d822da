"""Command-template tools: pull-style configuration tools such as the seed's ``servermaker``.

The template is a command line with ``{code_repo}`` and ``{server_role}``; each is replaced by its
shell-quoted value, so no spec value can add a shell command of its own.
"""

from __future__ import annotations

import shlex

from image_factory import remote


def render(template: str, code_repo: str | None, server_role: str) -> str:
    return template.format(code_repo=shlex.quote(code_repo or ""), server_role=shlex.quote(server_role))


def run_command_template(hook, template: str, configure, build) -> list[str]:
    command = render(template, configure.code_repo, configure.server_role)
    return remote.run(hook, command, timeout=build.settings.configure_timeout,
                      what=f"{configure.tool} role {configure.server_role!r}")
