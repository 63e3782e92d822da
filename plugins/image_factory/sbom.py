"""Each image's SBOM: a CycloneDX 1.6 JSON document of its operating system and every installed package, made
with CycloneDX's own library (cyclonedx-python-lib), stored in S3 and tagged on the image; and the questions
asked of them (``image-factory sbom``, ``image-factory find-package``).

Where and when:

- The first step checks that ``[image_factory] sbom_bucket`` exists and may be written (:func:`check_bucket`):
  a missing grant fails the build before anything is made, not at the end of a long build.
- ``configure`` reads the package database over the build's own SSH connection, as its last act before the
  stop (:func:`read_instance`), and writes the document at once, under the build id (:func:`build_key`): the
  instance is gone by the time the image has an id, and XCom carries only the key and the package count.
- ``register_image``, once the image is available, moves the document to ``sboms/<spec>/<image id>.cdx.json``
  (:func:`publish`: CopyObject, DeleteObject) and tags the image with its S3 address (``image-factory:sbom``)
  and package count, with the same call that marks it complete. Distribution copies tags: the copies point to
  the same document.

The instance's output is data: each line is parsed against a strict pattern (package names, versions and
architectures as Debian's policy and rpm allow them), never evaluated; a line that does not fit is refused,
shown escaped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import sys
import threading
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from image_factory.errors import PermanentError
from image_factory.remote import printable

log = logging.getLogger("image_factory")

TAG_SBOM = "image-factory:sbom"
TAG_SBOM_PACKAGES = "image-factory:sbom-packages"
PREFIX = "sboms"
#: The properties of the document's metadata that say which build made it.
PROPERTY = "image-factory:"
#: The most a package listing may be (a Debian server has a few hundred packages: some 50 bytes each).
MAX_OUTPUT = 8 * 1024 * 1024

DPKG_FORMAT = r"${db:Status-Abbrev}\t${Package}\t${Version}\t${Architecture}\n"
RPM_FORMAT = r"%{NAME}\t%{EPOCHNUM}:%{VERSION}-%{RELEASE}\t%{ARCH}\n"
#: One shell command (fixed text, no value of the build in it): os-release, then each database the image has.
READ_COMMAND = (
    "cat /etc/os-release; echo '#dpkg'; "
    f"if command -v dpkg-query >/dev/null; then dpkg-query -W -f '{DPKG_FORMAT}'; fi; echo '#rpm'; "
    f"if command -v rpm >/dev/null; then rpm -qa --qf '{RPM_FORMAT}'; fi")

OS_RELEASE_LINE = re.compile(r"([A-Z][A-Z0-9_]*)=(.*)")
# Debian policy 5.6.1 (names), 5.6.12 (versions); rpm's names and versions are of the same characters, or fewer.
NAME = r"[A-Za-z0-9][A-Za-z0-9+._-]*"
VERSION = r"[0-9]+:[A-Za-z0-9.+~:_-]+|[A-Za-z0-9][A-Za-z0-9.+~_-]*"
ARCH = r"[A-Za-z0-9_-]+"
DPKG_LINE = re.compile(rf"(?P<status>[a-zA-Z ]{{2,3}})\t(?P<name>{NAME})\t(?P<version>{VERSION})\t(?P<arch>{ARCH})")
RPM_LINE = re.compile(rf"(?P<name>{NAME})\t(?P<version>{VERSION})\t(?P<arch>{ARCH})")
ID = re.compile(r"[a-z0-9._-]+")


class SbomError(PermanentError):
    pass


@dataclass(frozen=True)
class Package:
    kind: str  # the package URL's type: "deb" or "rpm"
    name: str
    version: str
    arch: str


def key_of(spec: str, image_id: str) -> str:
    return f"{PREFIX}/{spec}/{image_id}.cdx.json"


def build_key(spec: str, build_id: str) -> str:
    """Where configure writes the document before the image has an id."""
    return f"{PREFIX}/{spec}/builds/{build_id}.cdx.json"


def s3_uri(bucket: str, key: str) -> str:
    return f"s3://{bucket}/{key}"


def split_uri(uri: str) -> tuple[str, str]:
    if not uri.startswith("s3://") or "/" not in uri[5:]:
        raise SbomError(f"{printable(uri, limit=200)!r} is not an s3://BUCKET/KEY address")
    bucket, _, key = uri[5:].partition("/")
    return bucket, key


# --- the first step: the bucket ------------------------------------------------------------------------------

def check_bucket(s3, bucket: str, spec: str) -> None:
    """The bucket exists and this build may write its SBOMs there: one small object written where they go
    (``sboms/<spec>/.write-check``, the same one each build). What to create or grant if not."""
    try:
        s3.put_object(Bucket=bucket, Key=f"{PREFIX}/{spec}/.write-check", Body=b"the SBOMs of this spec go here\n")
    except Exception as exc:
        code = _code(exc)
        if code in ("NoSuchBucket", "404"):
            raise SbomError(f"[image_factory] sbom_bucket {bucket!r} does not exist: create it (aws s3api "
                            f"create-bucket --bucket {bucket}), or set sbom: false in the spec. Nothing was "
                            "built") from None
        if code in ("AccessDenied", "403", "AllAccessDisabled"):
            raise SbomError(f"[image_factory] sbom_bucket {bucket!r} may not be written: grant the builds' role "
                            f"s3:PutObject, s3:GetObject and s3:DeleteObject on arn:aws:s3:::{bucket}/{PREFIX}/* "
                            "(include/iam/image-factory-policy.json), or set sbom: false in the spec. Nothing was "
                            "built") from None
        raise


#: The IAM actions of each S3 call the builds make that has no action of its name.
IAM_ACTIONS = {"s3:CopyObject": ("s3:GetObject", "s3:PutObject"), "s3:HeadObject": ("s3:GetObject",)}


def _code(exc: Exception) -> str:
    return str((getattr(exc, "response", None) or {}).get("Error", {}).get("Code", ""))


# --- configure: read the instance ------------------------------------------------------------------------------

def read_instance(hook, timeout: float = 300) -> tuple[dict[str, str], list[Package]]:
    """The instance's /etc/os-release and installed packages, over the build's SSH connection."""
    _, stdout, _ = hook.get_conn().exec_command(READ_COMMAND, timeout=timeout)
    data = stdout.read(MAX_OUTPUT + 1)
    if len(data) > MAX_OUTPUT:
        raise SbomError(f"the package listing is over {MAX_OUTPUT} bytes: refused")
    status = stdout.channel.recv_exit_status()
    if status != 0:
        raise SbomError(f"reading the package database failed (exit status {status})")
    return parse(data.decode("utf-8", "replace"))


def parse(output: str) -> tuple[dict[str, str], list[Package]]:
    """os-release's fields and the installed packages, from :data:`READ_COMMAND`'s output."""
    section, os_release, packages = "os-release", {}, []
    for number, line in enumerate(output.splitlines(), 1):
        if line in ("#dpkg", "#rpm"):
            section = line[1:]
            continue
        if section == "os-release":
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            match = OS_RELEASE_LINE.fullmatch(line)
            if match:
                os_release[match[1]] = _unquoted(match[2])
                continue
        elif section == "dpkg" and (match := DPKG_LINE.fullmatch(line)):
            if match["status"][1:2] == "i":  # installed (not only its configuration files left)
                packages.append(Package("deb", match["name"], match["version"], match["arch"]))
            continue
        elif section == "rpm" and (match := RPM_LINE.fullmatch(line)):
            version = match["version"].removeprefix("0:")  # rpm's epoch 0 is no epoch
            packages.append(Package("rpm", match["name"], version, match["arch"]))
            continue
        raise SbomError(f"line {number} of the instance's {section} listing is not one: "
                        f"{printable(line, limit=200)!r}")
    return os_release, packages


def _unquoted(value: str) -> str:
    """An os-release value (shell-like quoting, os-release(5)), as text: never run by a shell."""
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        value = value[1:-1]
    return re.sub(r"\\([\\$\"'`])", r"\1", value)


# --- the document ---------------------------------------------------------------------------------------------

def document(os_release: dict[str, str], packages: Iterable[Package], metadata: dict[str, str]) -> str:
    """The CycloneDX 1.6 JSON document, validated against the schema by the library's own validator."""
    from cyclonedx.model import Property
    from cyclonedx.model.bom import Bom
    from cyclonedx.model.component import Component, ComponentType
    from cyclonedx.output.json import JsonV1Dot6
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator
    from packageurl import PackageURL

    distro_id = os_release.get("ID", "")
    if not ID.fullmatch(distro_id):
        raise SbomError(f"/etc/os-release's ID {printable(distro_id, limit=80)!r} is not an operating system id")
    version_id = os_release.get("VERSION_ID", "")
    bom = Bom()
    bom.metadata.component = Component(type=ComponentType.OPERATING_SYSTEM, name=distro_id,
                                       version=version_id or None, bom_ref="operating-system",
                                       description=os_release.get("PRETTY_NAME") or None)
    for name, value in metadata.items():
        bom.metadata.properties.add(Property(name=f"{PROPERTY}{name}", value=value))
    distro = f"{distro_id}-{version_id}" if version_id else distro_id
    components = []
    for package in packages:
        purl = PackageURL(type=package.kind, namespace=distro_id, name=package.name, version=package.version,
                          qualifiers={"arch": package.arch, "distro": distro})
        components.append(Component(type=ComponentType.LIBRARY, name=package.name, version=package.version,
                                    purl=purl, bom_ref=str(purl)))
    bom.components.update(components)
    bom.register_dependency(bom.metadata.component, components)  # the system holds each package
    text = JsonV1Dot6(bom).output_as_string(indent=None)
    error = JsonStrictValidator(SchemaVersion.V1_6).validate_str(text)
    if error is not None:
        raise SbomError(f"the SBOM does not validate against CycloneDX 1.6: {error}")
    return text


def store(s3, bucket: str, key: str, text: str) -> None:
    s3.put_object(Bucket=bucket, Key=key, Body=text.encode(), ContentType="application/vnd.cyclonedx+json")
    log.info("sbom: written to %s (%d bytes)", s3_uri(bucket, key), len(text))


def publish(s3, bucket: str, spec: str, build_id: str, image_id: str) -> str:
    """The build's document moved to the image's key; returns that key. Safe to run again: once moved, the
    build's key is gone and the image's is there."""
    source, target = build_key(spec, build_id), key_of(spec, image_id)
    try:
        s3.copy_object(Bucket=bucket, Key=target, CopySource={"Bucket": bucket, "Key": source})
    except Exception as exc:
        if _code(exc) not in ("NoSuchKey", "404"):
            raise
        s3.head_object(Bucket=bucket, Key=target)  # moved by a try before (else: this raises)
        return target
    s3.delete_object(Bucket=bucket, Key=source)
    log.info("sbom: %s is image %s's", s3_uri(bucket, target), image_id)
    return target


def discard(s3, bucket: str, key: str) -> None:
    """The build's document, when the build made no image (teardown); gone already is fine."""
    s3.delete_object(Bucket=bucket, Key=key)
    log.info("sbom: %s deleted (the build registered no image)", s3_uri(bucket, key))


# --- the questions ------------------------------------------------------------------------------------------

SBOM_KEY = re.compile(rf"{PREFIX}/(?P<spec>[^/]+)/ami-[0-9a-f]+\.cdx\.json")


def uri_of(tags: dict[str, str]) -> str | None:
    """The SBOM address an image's tags give (None: none), checked: an SBOM of the image's own spec, never any
    other object (tags are anyone's to write who may tag images)."""
    from image_factory.build import TAG_SPEC

    uri = tags.get(TAG_SBOM)
    if uri is None:
        return None
    _, key = split_uri(uri)
    match = SBOM_KEY.fullmatch(key)
    if not match or match["spec"] != tags.get(TAG_SPEC):
        raise SbomError(f"the {TAG_SBOM} tag {printable(uri, limit=200)!r} is not an SBOM of the image's spec "
                        f"({PREFIX}/<spec>/<image id>.cdx.json)")
    return uri


def read(s3, uri: str) -> bytes:
    bucket, key = split_uri(uri)
    return s3.get_object(Bucket=bucket, Key=key)["Body"].read()


def packages_in(sbom: dict, name: str | None = None) -> list[Package]:
    """The packages of a CycloneDX document (only those named ``name``, if given), from their package URLs."""
    from packageurl import PackageURL

    found = []
    for component in sbom.get("components", []):
        purl = component.get("purl")
        if not purl or (name is not None and component.get("name") != name):
            continue
        parsed = PackageURL.from_string(purl)
        found.append(Package(parsed.type, parsed.name, parsed.version or "", (parsed.qualifiers or {}).get(
            "arch", "")))
    return found


def older(kind: str, version: str, than: str) -> bool:
    """Whether ``version`` comes before ``than`` in the package format's own ordering (Debian's for deb)."""
    if kind != "deb":
        raise SbomError(f"--below compares Debian versions only; this image's package is of type {kind}")
    from debian.debian_support import version_compare

    return version_compare(version, than) < 0


class Cache:
    """SBOMs read before, in a folder of the user's: a document never changes once it is at its image's key (the
    key names the image; register_image writes it once), so a repeated incident query reads only the new
    images' documents. Files by a hash of the endpoint and the address; written whole, then renamed."""

    def __init__(self, folder: Path, endpoint: str | None):
        self.folder, self.endpoint = folder, endpoint or ""

    @classmethod
    def default(cls, endpoint: str | None) -> Cache:
        base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
        return cls(Path(base) / "image-factory" / "sboms", endpoint)

    def read(self, s3, uri: str) -> bytes:
        path = self.folder / (hashlib.sha256(f"{self.endpoint}\n{uri}".encode()).hexdigest() + ".cdx.json")
        try:
            return path.read_bytes()
        except FileNotFoundError:
            pass
        text = read(s3, uri)
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        partial = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.part")
        partial.write_bytes(text)
        partial.replace(path)
        return text


@dataclass
class Hit:
    image_id: str
    spec: str
    created: str
    version: str
    channels: list[str]


#: Documents read at once (each a GetObject).
READERS = 16


def find_package(ec2, s3, ssm, name: str, *, below: str | None = None, spec: str | None = None,
                 channel_prefix: str = "/image-factory", cache: Cache | None = None) -> list[Hit]:
    """The images (tagged with an SBOM; of ``spec`` only, if given) whose SBOM lists package ``name`` (at a
    version before ``below``, if given), newest first, with the channels naming each. One DescribeImages
    listing, one listing of the channels, one GetObject per image (a few at a time) not in ``cache``."""
    from image_factory.aws import all_items
    from image_factory.build import TAG_SPEC, tag_dict

    filters = [{"Name": "tag-key", "Values": [TAG_SBOM]}]
    if spec:
        filters.append({"Name": f"tag:{TAG_SPEC}", "Values": [spec]})
    images = list(all_items(ec2, "describe_images", "Images", Owners=["self"], IncludeDeprecated=True,
                            Filters=filters))
    # A quick look before the parse: only a document with the name as a JSON string is parsed.
    needle = json.dumps(name).encode()

    def versions(image: dict) -> list[str]:
        try:
            uri = uri_of(tag_dict(image.get("Tags")))
        except SbomError as exc:
            log.warning("find-package: %s: %s; skipped", image["ImageId"], exc)
            return []
        text = read(s3, uri) if cache is None else cache.read(s3, uri)
        if needle not in text:
            return []
        return [p.version for p in packages_in(json.loads(text), name)
                if p.name == name and (below is None or older(p.kind, p.version, below))]

    with ThreadPoolExecutor(max_workers=READERS) as pool:
        found = list(pool.map(versions, images))
    channels: dict[str, list[str]] = {}
    if any(found):
        for parameter in all_items(ssm, "get_parameters_by_path", "Parameters",
                                   Path=channel_prefix.rstrip("/") + "/", Recursive=True):
            channels.setdefault(parameter["Value"], []).append(parameter["Name"].rsplit("/", 1)[1])
    hits = [Hit(image["ImageId"], tag_dict(image.get("Tags")).get(TAG_SPEC, "-"), image.get("CreationDate", ""),
                ", ".join(sorted(set(version))), sorted(channels.get(image["ImageId"], [])))
            for image, version in zip(images, found, strict=True) if version]
    return sorted(hits, key=lambda hit: hit.created, reverse=True)


def sbom_of(ec2, s3, image_id: str) -> bytes:
    """The SBOM document the image's tag points to."""
    from image_factory.build import tag_dict

    found = ec2.describe_images(ImageIds=[image_id])["Images"]
    if not found:
        raise SbomError(f"no image {image_id}")
    uri = uri_of(tag_dict(found[0].get("Tags")))
    if not uri:
        raise SbomError(f"image {image_id} has no SBOM (no {TAG_SBOM} tag: built with sbom: false, before SBOMs, "
                        "or without [image_factory] sbom_bucket)")
    return read(s3, uri)



# --- the command line (bin/image-factory sbom, find-package) ---------------------------------------------------

def _clients(region: str | None, aws_conn_id: str | None):
    from image_factory.aws import clients

    return clients(aws_conn_id or "aws_default", region)


def print_sbom(image_id: str, region: str | None, aws_conn_id: str | None) -> int:
    """``image-factory sbom AMI``: the image's SBOM, as stored."""
    try:
        c = _clients(region, aws_conn_id)
        text = sbom_of(c.ec2, c.s3, image_id)
    except Exception as exc:  # the connection, the call, no SBOM
        print(f"image-factory sbom: {image_id}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write(text.decode("utf-8", "replace").rstrip("\n") + "\n")
    return 0


def print_find_package(name: str, below: str | None, spec: str | None, region: str | None,
                       aws_conn_id: str | None) -> int:
    """``image-factory find-package NAME``: the images with the package, newest first (exit 1: none)."""
    from image_factory.spec import channel_prefix

    try:
        c = _clients(region, aws_conn_id)
        hits = find_package(c.ec2, c.s3, c.ssm, name, below=below, spec=spec, channel_prefix=channel_prefix(),
                            cache=Cache.default(c.endpoint_url))
    except Exception as exc:
        print(f"image-factory find-package: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    wanted = f"{name}" + (f" below {below}" if below else "")
    if not hits:
        print(f"no image has {wanted} in {c.ec2.meta.region_name}")
        return 1
    rows = [("IMAGE", "SPEC", "CREATED", "VERSION", "CHANNELS"),
            *((h.image_id, h.spec, h.created, h.version, ",".join(h.channels) or "-") for h in hits)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(printable(cell, limit=200).ljust(width) for cell, width in zip(row, widths, strict=True))
              .rstrip())
    return 0
