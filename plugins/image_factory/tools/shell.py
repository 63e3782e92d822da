"""The ``shell`` tool: the role is a folder of scripts, ``include/roles/<server_role>/``.

The folder is copied to a fresh directory on the instance and its top-level ``*.sh`` scripts run there in
name order, each with bash; the first failure stops the role. The directory is removed afterwards so that
the role's own files do not end up in the image.
"""

from __future__ import annotations

import contextlib
import logging
import shlex
from pathlib import Path

from image_factory import remote
from image_factory.errors import PermanentError

log = logging.getLogger("image_factory")

ROLES_DIR = Path(__file__).resolve().parents[3] / "include" / "roles"
STAGING_PREFIX = "/tmp/image-factory-role."  # on the builder instance; made private (0700)


class RoleError(PermanentError):
    pass


def role_files(role: str, roles_dir: Path = ROLES_DIR) -> list[Path]:
    """The role's files, relative to its folder; refuses names or links that lead outside it."""
    folder = (roles_dir / role).resolve()
    if not folder.is_relative_to(roles_dir.resolve()) or folder == roles_dir.resolve():
        raise RoleError(f"configure.server_role {role!r} leads outside {roles_dir}")
    if not folder.is_dir():
        known = sorted(p.name for p in roles_dir.iterdir() if p.is_dir()) if roles_dir.is_dir() else []
        raise RoleError(f"configure.server_role {role!r}: no folder {folder} (roles: {', '.join(known) or 'none'})")
    files = []
    for path in sorted(folder.rglob("*")):
        if path.is_symlink():
            raise RoleError(f"role {role!r}: {path.relative_to(folder)} is a symbolic link; roles hold plain files")
        if path.is_file():
            files.append(path.relative_to(folder))
    if not any(f.suffix == ".sh" and len(f.parts) == 1 for f in files):
        raise RoleError(f"role {role!r} has no *.sh script at the top of {folder}")
    return files


def run_shell_role(hook, role: str, build) -> list[str]:
    roles_dir = Path(build.settings.roles_folder) if build.settings.roles_folder else ROLES_DIR
    files = role_files(role, roles_dir)
    sftp = hook.get_conn().open_sftp()
    try:
        staging = remote.private_directory(sftp, STAGING_PREFIX)
        try:
            for relative in files:
                for parent in reversed(relative.parents[:-1]):
                    with contextlib.suppress(OSError):  # exists already
                        sftp.mkdir(f"{staging}/{parent.as_posix()}")
                sftp.put(str(roles_dir / role / relative), f"{staging}/{relative.as_posix()}")
        except BaseException:
            remote.run(hook, f"rm -rf -- {shlex.quote(staging)}", timeout=60)
            raise
    finally:
        sftp.close()
    log.info("configure: copied role %r (%d files) to %s", role, len(files), staging)
    environment = {
        "IMAGE_FACTORY_SERVER_ROLE": role,
        "IMAGE_FACTORY_IMAGE_NAME": build.spec.name,
        "IMAGE_FACTORY_BUILD_ID": build.build_id,
    }
    exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in environment.items())
    quoted = shlex.quote(staging)
    # One remote command runs the role and removes its folder however the role ends (the EXIT trap), so
    # that the role's own files do not end up in the image: one round trip instead of three.
    command = (f"trap {shlex.quote(f'cd / && rm -rf -- {quoted}')} EXIT; cd {quoted} && export {exports} && "
               'for script in ./*.sh; do echo "==> $script"; bash "$script" || exit $?; done')
    return remote.run(hook, command, timeout=build.settings.configure_timeout, what=f"role {role!r}")

