"""Deployment settings: the ``[image_factory]`` section of Airflow's config.

Each one can be set in airflow.cfg or as ``AIRFLOW__IMAGE_FACTORY__<KEY>``. They describe where the
builds run (an emulated cloud's SSH endpoint, the provisioner's address), never what a spec builds, so the
same spec builds on AWS and on the local cloud. Read them in tasks, not at DAG parse time.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

from image_factory.errors import PermanentError
from image_factory.host_keys import CHECKS

SECTION = "image_factory"

DEFAULT_SERVERMAKER_COMMAND = "servermaker apply --repository {code_repo} --role {server_role}"


class SettingsError(PermanentError):
    pass


@dataclass(frozen=True)
class Settings:
    #: Where SSH reaches builder instances; empty means the instance's own address.
    ssh_host: str = ""
    ssh_port: int = 22
    #: Overrides the spec's ssh_username (an emulated cloud's instance is a local account).
    ssh_username: str = ""
    #: The CIDR the builder's security group lets into port 22: the address builds SSH in from.
    provisioner_cidr: str = ""
    #: Create build subnets in this VPC; empty means each build makes a VPC of its own.
    builder_vpc_id: str = ""
    builder_vpc_cidr: str = "10.213.0.0/24"
    #: Seconds between polls of a cloud state (instance running, image available, ...), the short stop before
    #: the image at half of it; 0, the default: each wait polls on a schedule fitted to the spec's recent
    #: builds (polling.py).
    poll_interval: float = 0.0
    ssh_timeout: float = 600.0
    #: ``console``: SSH only to the host key the instance's console shows (host_keys.py); ``off``: any host key.
    host_key_check: str = "console"
    #: Seconds a server role may run (the configure tool's whole run); still running then, the build fails.
    configure_timeout: float = 3600.0
    image_timeout: float = 3600.0
    servermaker_command: str = DEFAULT_SERVERMAKER_COMMAND
    #: Where the shell tool finds roles; empty means include/roles of this project.
    roles_folder: str = ""
    #: Where the ansible tool finds playbook sources (``configure.code_repo``); empty means include/ansible.
    ansible_folder: str = ""
    #: The builder's Python for ansible modules; the default discovers it. Set where discovery picks a wrong one.
    ansible_python_interpreter: str = "auto_silent"
    #: Airflow retries of each step on transient errors (permanent ones fail at once), and the first delay.
    retries: int = 3
    retry_delay: float = 20.0
    #: The Airflow pool of the steps that call the cloud API: bounds how many builds hit it at once.
    pool: str = "image_factory"
    #: Where the test tools find ``test.tests`` folders; empty means include/tests of this project.
    tests_folder: str = ""
    #: The SSM path of the channels: ``<channel_prefix>/<spec>/<channel>``.
    channel_prefix: str = "/image-factory"
    #: The SNS topic of the specs without a topic of their own (notify.py); empty: those send nothing.
    sns_topic_arn: str = ""
    #: The S3 bucket of the images' SBOMs (sbom.py: ``sboms/<spec>/<image id>.cdx.json``); empty: no SBOMs.
    sbom_bucket: str = ""

    def default_topic(self) -> str:
        """``sns_topic_arn``, checked: an SNS topic's ARN, or empty."""
        from image_factory.spec import SNS_TOPIC_ARN

        if self.sns_topic_arn and not SNS_TOPIC_ARN.match(self.sns_topic_arn):
            raise SettingsError(f"[{SECTION}] sns_topic_arn {self.sns_topic_arn!r}: expected an SNS topic ARN, "
                                "arn:aws:sns:<region>:<12-digit account>:<topic name>")
        return self.sns_topic_arn

    def checks_host_key(self) -> bool:
        """Whether SSH goes only to the host key the instance's console shows (``host_key_check``)."""
        if self.host_key_check not in CHECKS:
            raise SettingsError(f"[{SECTION}] host_key_check {self.host_key_check!r}: expected one of "
                                f"{', '.join(CHECKS)} (console: SSH only to the host key the instance's console "
                                "shows; off: any host key)")
        return self.host_key_check == "console"

    def cidr(self, allow_anywhere: bool) -> str:
        if not self.provisioner_cidr:
            raise SettingsError(
                "[image_factory] provisioner_cidr is not set (AIRFLOW__IMAGE_FACTORY__PROVISIONER_CIDR): "
                "the builder's security group lets SSH in only from this CIDR, the address the workers use")
        try:
            network = ipaddress.ip_network(self.provisioner_cidr)
        except ValueError as exc:
            raise SettingsError(f"[image_factory] provisioner_cidr: {exc}") from None
        if network.prefixlen == 0 and not allow_anywhere:
            raise SettingsError(
                f"[image_factory] provisioner_cidr {self.provisioner_cidr} opens SSH to the whole internet; "
                "set a narrower CIDR, or set allow_ssh_from_anywhere: true in the spec")
        return str(network)


def specs_folder(default: Path) -> Path:
    """Where the DAG file finds specs (read at parse time: a config value, no network, no Variable)."""
    from airflow.sdk import conf

    return Path(conf.get(SECTION, "specs_folder", fallback="") or default)


def load() -> Settings:
    from airflow.sdk import conf

    def get(key: str, default):
        value = conf.get(SECTION, key, fallback=None)
        if value in (None, ""):
            return default
        try:
            return type(default)(value)
        except ValueError:
            raise SettingsError(f"[{SECTION}] {key}: expected a {type(default).__name__}, got {value!r}") from None

    defaults = Settings()
    return Settings(**{field: get(field, getattr(defaults, field)) for field in defaults.__dataclass_fields__})
