"""Bad input gets a clear error, and nothing is lost (issue 27).

Each test attacks one way a spec file, a specs folder, a tests folder or a parameter's value can go wrong:
the answer is a short error naming the file (or spec) and the field, never an exception that hides the other
specs, never a process that runs out of memory or time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from image_factory import build as build_module
from image_factory import parameters
from image_factory.errors import PermanentError
from image_factory.parameters import ParameterError, chain, resolve, resolve_text
from image_factory.spec import (
    FACTORY_IMAGE_TAGS,
    MAX_NAME_LENGTH,
    MAX_SPEC_TAGS,
    SpecError,
    load_spec,
    load_specs,
    parse_spec,
)
from image_factory.spec_file import MAX_SPEC_BYTES

PROJECT = Path(__file__).resolve().parents[1]
LIVE_SPEC = PROJECT / "include" / "specs" / "shopspinner-linux-image.yaml"


def spec_text(name: str = "bad-input-image", **fields: str) -> str:
    body = {"name": name, "origin": "ami-0123456789abcdef0", "region": "eu-west-1", **fields}
    return "image:\n" + "".join(f"  {key}: {value}\n" for key, value in body.items())


def problems_of(text: str, path: str = "bad.yaml") -> list[tuple[str, str]]:
    with pytest.raises(SpecError) as caught:
        parse_spec(text, path)
    return caught.value.problems


# 1. A YAML "billion laughs": 500 bytes of nested aliases


def bomb(levels: int = 9) -> str:
    lines = ["image:", '  name: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"  n{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, levels)]
    return "\n".join([*lines, f"  origin: *a{levels - 1}", "  region: eu-west-1", ""])


#: Runs in a process of its own (a bomb that is not refused would take minutes and gigabytes): loads the
#: bomb the way argv[1] says and prints the seconds, the peak of the memory allocated and the error's length.
PROBE = textwrap.dedent("""\
    import contextlib, io, json, sys, time, tracemalloc
    from pathlib import Path
    how, path = sys.argv[1], Path(sys.argv[2])
    from image_factory import cli, spec
    out = io.StringIO()
    tracemalloc.start()
    started = time.perf_counter()
    if how == "parse_spec":
        try:
            spec.parse_spec(path.read_text(), path)
            message = ""
        except spec.SpecError as exc:
            message = str(exc)
    elif how == "load_specs":
        specs, errors = spec.load_specs(path.parent)
        message = "\\n".join(map(str, errors))
    else:
        with contextlib.redirect_stdout(out):
            cli.main(["validate", str(path)])
        message = out.getvalue()
    seconds = time.perf_counter() - started
    peak = tracemalloc.get_traced_memory()[1]
    print(json.dumps({"seconds": seconds, "peak": peak, "message": message[:2000], "length": len(message)}))
""")


def probe(how: str, path: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(PROJECT / "plugins")}
    try:
        done = subprocess.run([sys.executable, "-c", PROBE, how, str(path)], capture_output=True, text=True,
                              timeout=30, env=env, check=True)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{how}: the bomb was not refused within 30 seconds")
    return json.loads(done.stdout.splitlines()[-1])


@pytest.mark.parametrize("how", ["parse_spec", "load_specs", "validate"])
def test_a_billion_laughs_is_refused_fast_with_a_short_error(tmp_path, how):
    path = tmp_path / "bomb.yaml"
    path.write_text(bomb())
    assert path.stat().st_size < 600
    result = probe(how, path)
    assert result["seconds"] < 0.5, result
    assert result["peak"] < 50 * 2**20, result
    assert 0 < result["length"] < 300, result
    assert str(path) in result["message"] and "alias" in result["message"], result


def test_a_self_referring_alias_is_refused():
    [(_, message)] = problems_of("image: &a\n  name: *a\n  origin: ami-0123456789abcdef0\n  region: eu-west-1\n")
    assert "alias" in message and len(message) < 200


def test_a_few_aliases_are_fine():
    text = ("image:\n  name: alias-image\n  origin: ami-0123456789abcdef0\n  region: &r eu-west-1\n"
            "  tags: &t {team: shop, owner: ops}\n  description: *r\n")
    assert parse_spec(text).description == "eu-west-1"


# 2. Entries of the specs folder that are not spec files


def test_a_folder_a_broken_link_and_a_fifo_are_one_error_each(tmp_path):
    (tmp_path / "good.yaml").write_text(spec_text("good-image"))
    (tmp_path / "folder.yaml").mkdir()
    (tmp_path / "dangling.yml").symlink_to(tmp_path / "nowhere.yaml")
    os.mkfifo(tmp_path / "pipe.yaml")
    (tmp_path / "loop.yaml").symlink_to(tmp_path / "loop.yaml")
    (tmp_path / "linked.yaml").symlink_to(tmp_path / "target.txt")
    (tmp_path / "target.txt").write_text(spec_text("linked-image"))

    specs, errors = load_specs(tmp_path)

    assert [s.name for s in specs] == ["good-image", "linked-image"]  # a link to a regular file is fine
    by_file = {Path(e.path).name: e for e in errors}
    assert sorted(by_file) == ["dangling.yml", "folder.yaml", "loop.yaml", "pipe.yaml"]
    assert "a folder" in str(by_file["folder.yaml"])
    assert "symbolic link" in str(by_file["dangling.yml"]) and "nowhere.yaml" in str(by_file["dangling.yml"])
    assert "not a regular file" in str(by_file["pipe.yaml"])
    for error in errors:
        assert str(error).startswith(f"{error.path}: image: ")
    # A task process reads only the files naming its spec: the same entries are no exception there either.
    specs, errors = load_specs(tmp_path, only="good-image")
    assert [s.name for s in specs] == ["good-image"]


def test_an_unreadable_file_is_one_error(tmp_path, monkeypatch):
    (tmp_path / "good.yaml").write_text(spec_text("good-image"))
    (tmp_path / "secret.yaml").write_text(spec_text("secret-image"))
    real_open = os.open

    def refusing(path, *args, **kwargs):
        if str(path).endswith("secret.yaml"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", refusing)
    specs, errors = load_specs(tmp_path)
    assert [s.name for s in specs] == ["good-image"]
    assert [str(e) for e in errors] == [f"{tmp_path / 'secret.yaml'}: image: cannot read the file: "
                                        "Permission denied"]


def test_a_huge_file_is_refused_without_reading_it_all(tmp_path):
    (tmp_path / "huge.yaml").write_text(spec_text("huge-image") + "# " + "x" * MAX_SPEC_BYTES + "\n")
    with pytest.raises(SpecError) as caught:
        load_spec(tmp_path / "huge.yaml")
    assert caught.value.problems == [("image", f"the file is larger than {MAX_SPEC_BYTES // 1024} KiB")]


@pytest.mark.parametrize("text", [
    "image:\n  name: when-image\n  origin: ami-0123456789abcdef0\n  region: eu-west-1\n  description: 2001-02-30\n",
    "image:\n  name: big-image\n  origin: ami-0123456789abcdef0\n  region: eu-west-1\n  description: "
    + "1" * 5000 + "\n",
], ids=["impossible-date", "huge-integer"])
def test_values_yaml_cannot_make_are_a_spec_error(tmp_path, text):
    (tmp_path / "good.yaml").write_text(spec_text("good-image"))
    (tmp_path / "bad.yaml").write_text(text)
    specs, errors = load_specs(tmp_path)
    assert [s.name for s in specs] == ["good-image"]
    [error] = errors
    assert error.path == str(tmp_path / "bad.yaml") and len(str(error)) < 300


# 3. Duplicate keys


def test_a_duplicate_key_names_both_lines():
    text = ("image:\n  name: twice-image\n  origin: ami-0123456789abcdef0\n  region: eu-west-1\n"
            "  instance_size: small\n  tags:\n    team: a\n    other: b\n  region: eu-west-2\n")
    assert problems_of(text) == [("image.region", "key 'region' given twice: lines 4 and 9")]


def test_a_duplicate_key_in_a_nested_mapping():
    text = ("image:\n  name: twice-image\n  origin: ami-0123456789abcdef0\n  region: eu-west-1\n"
            "  configure:\n    tool: shell\n    server_role: appserver\n    tool: command\n")
    assert problems_of(text) == [("image.configure.tool", "key 'tool' given twice: lines 6 and 8")]


def test_a_duplicate_key_in_a_flow_mapping_and_at_the_top():
    text = "image:\n  name: x-image\n  tags: {a: b, a: c}\n"
    assert problems_of(text) == [("image.tags.a", "key 'a' given twice: lines 3 and 3")]
    assert problems_of("image: {}\nimage: {}\n") == [("image", "key 'image' given twice: lines 1 and 2")]


def test_a_merge_key_may_be_overridden():
    text = ("image:\n  name: merged-image\n  origin: ami-0123456789abcdef0\n  region: eu-west-1\n"
            "  tags:\n    <<: {team: a, owner: b}\n    team: c\n")
    assert parse_spec(text).tags == {"team": "c", "owner": "b"}


# 4. A value with a trailing newline


@pytest.mark.parametrize(("field", "line"), [
    ("image.name", 'name: "newline-image\\n"'),
    ("image.origin", 'origin: "ami-0123456789abcdef0\\n"'),
    ("image.origin", 'origin: "resolve:ssm:/aws/service/x\\n"'),
    ("image.region", 'region: "eu-west-1\\n"'),
    ("image.instance_size", 'instance_size: "m6i.large\\n"'),
    ("image.subnet", 'subnet: "subnet-0123456789abcdef0\\n"'),
    ("image.ssh_username", 'ssh_username: "ubuntu\\n"'),
    ("image.aws_conn_id", 'aws_conn_id: "aws_default\\n"'),
    ("image.tags", 'tags: {"team\\n": a}'),
    ("image.configure.server_role", 'configure: {tool: shell, server_role: "appserver\\n"}'),
    ("image.configure.code_repo", 'configure: {tool: ansible, server_role: web, code_repo: "site\\n"}'),
    ("image.test.tests", 'test: {tool: testinfra, tests: "appserver\\n"}'),
    ("image.test.instance_size", 'test: {tool: testinfra, tests: appserver, instance_size: "m6i.large\\n"}'),
    ("image.promote.channels", 'promote: {channels: ["latest\\n"]}'),
    ("image.distribute.share_with.accounts", 'distribute: {share_with: {accounts: ["123456789012\\n"]}}'),
    ("image.distribute.share_with.organizations",
     'distribute: {share_with: {organizations: '
     '["arn:aws:organizations::111122223333:organization/o-exampleorgid\\n"]}}'),
    ("image.distribute.share_with.organizational_units",
     'distribute: {share_with: {organizational_units: '
     '["arn:aws:organizations::111122223333:ou/o-exampleorgid/ou-abcd-12345678\\n"]}}'),
    ("image.description", 'description: "${NAME\\n}"'),
])
def test_a_trailing_newline_is_refused(field, line):
    base = {"name": "newline-image", "origin": "ami-0123456789abcdef0", "region": "eu-west-1"}
    key = line.split(":", 1)[0]
    body = "".join(f"  {k}: {v}\n" for k, v in base.items() if k != key) + f"  {line}\n"
    problems = dict(problems_of("image:\n" + body))
    assert field in problems, problems


def test_the_cli_and_other_callers_get_anchored_patterns_too():
    from image_factory.spec import IMAGE_NAME, REGION, ROLE_NAME

    for pattern, good in ((IMAGE_NAME, "some-image"), (REGION, "eu-west-1"), (ROLE_NAME, "appserver")):
        assert pattern.match(good) and not pattern.match(good + "\n")
    assert not parameters.NAME.match("NAME\n")


# 5. Names, tags and sizes within AWS's limits


def test_the_image_name_with_the_build_suffix_fits_in_128_characters():
    from datetime import datetime

    from image_factory.build import build_id_for

    logical = datetime(2025, 12, 31, 23, 59, 59).strftime("%Y%m%d-%H%M%S")  # as tasks.py makes it
    name = "n" * MAX_NAME_LENGTH
    assert len(f"{name}-{logical}-{build_id_for(name, 'manual__2025-12-31T23:59:59+00:00')}") == 128
    assert parse_spec(spec_text(name)).name == name
    [(field, message)] = problems_of(spec_text(name + "n"))
    assert field == "image.name" and f"3-{MAX_NAME_LENGTH} characters" in message
    assert len(message) < 300


def test_the_factory_tags_are_counted():
    # (TAG_INSTANCE, TAG_KEEP_UNTIL, TAG_LOGIN: on a build's instances and what a failed build keeps, never on
    # an image)
    image_tags = {value for key, value in vars(build_module).items()
                  if key.startswith("TAG_") and key not in ("TAG_INSTANCE", "TAG_KEEP_UNTIL", "TAG_LOGIN")}
    assert len(image_tags | {"Name"}) == FACTORY_IMAGE_TAGS
    assert MAX_SPEC_TAGS == 50 - FACTORY_IMAGE_TAGS


def test_at_most_so_many_tags():
    tags = "{" + ", ".join(f"k{n}: v" for n in range(MAX_SPEC_TAGS)) + "}"
    assert len(parse_spec(spec_text(tags=tags)).tags) == MAX_SPEC_TAGS
    tags = "{" + ", ".join(f"k{n}: v" for n in range(MAX_SPEC_TAGS + 1)) + "}"
    [(field, message)] = problems_of(spec_text(tags=tags))
    assert field == "image.tags"
    assert f"at most {MAX_SPEC_TAGS} tags" in message and "50" in message and len(message) < 300


@pytest.mark.parametrize("key", [
    "AWS:x", "Aws:x", "aws:x", "IMAGE-FACTORY:spec", "Image-Factory:spec", " image-factory:spec",
    "image-factory :spec", "\uff49\uff4d\uff41\uff47\uff45-factory:spec",  # fullwidth letters
    "\u0456mage-factory:spec", "im\u0430ge-f\u0430ctory:spec",  # a Cyrillic i; Cyrillic a's
    "image\u2010factory:spec", "image-factory\uff1aspec", "image-fac\u200btory:spec", "\uff41\uff57\uff53:x",
    "Image_Factory:spec", "image factory:x",
    "tab\tkey", "new\nline", "hash#key", "quote'key", "",
])
def test_reserved_and_look_alike_tag_keys_are_refused(key):
    problems = dict(problems_of(spec_text(tags=json.dumps({key: "v"}))))
    assert "image.tags" in problems, problems
    assert len(problems["image.tags"]) < 300


@pytest.mark.parametrize("key", ["team", "cost centre", "a.b:c/d=e+f-g@h_i", "Ärger", "image-factory", "awsome"])
def test_ordinary_tag_keys_are_fine(key):
    assert parse_spec(spec_text(tags=json.dumps({key: "v"}))).tags == {key: "v"}


def test_tag_values_and_the_description_have_sizes():
    assert parse_spec(spec_text(tags=json.dumps({"k": "v" * 256}))).tags["k"] == "v" * 256
    assert "image.tags" in dict(problems_of(spec_text(tags=json.dumps({"k": "v" * 257}))))
    assert parse_spec(spec_text(description="d" * 1000)).description == "d" * 1000
    [(field, message)] = problems_of(spec_text(description="d" * 1001))
    assert field == "image.description" and "1000" in message and len(message) < 300


def test_a_long_bad_value_is_quoted_cut_short():
    for text in (spec_text(region="x" * 10_000), spec_text("y" * 10_000), spec_text(**{"z" * 10_000: "1"}),
                 spec_text(tags=json.dumps({"aws:" + "k" * 10_000: "v"})),
                 spec_text(promote="{channels: [" + "c/" * 5000 + "]}")):
        for field, message in problems_of(text):
            assert len(field) < 150 and len(message) < 300, (field[:100], message[:100])


def test_many_bad_items_are_a_few_lines():
    text = spec_text(egress_ports="[" + ", ".join(["x"] * 10_000) + "]")
    with pytest.raises(SpecError) as caught:
        parse_spec(text, "many.yaml")
    assert len(caught.value.problems) <= 21 and len(str(caught.value)) < 5000
    assert "more" in caught.value.problems[-1][1]


# 5. Parameter expansion is bounded, and a resolved value is never quoted


def test_parameter_expansion_is_bounded_in_depth():
    values = {f"P{n}": f"${{P{n + 1}}}" for n in range(parameters.MAX_DEPTH + 1)}
    values[f"P{parameters.MAX_DEPTH + 1}"] = "eu-west-1"
    with pytest.raises(ParameterError) as caught:
        resolve_text("${P0}", chain(values), spec_name="s", field="region")
    message = str(caught.value)
    assert "image.region" in message and f"deeper than {parameters.MAX_DEPTH}" in message
    values = {f"P{n}": f"${{P{n + 1}}}" for n in range(parameters.MAX_DEPTH - 1)}
    values[f"P{parameters.MAX_DEPTH - 1}"] = "eu-west-1"
    assert resolve_text("${P0}", chain(values), spec_name="s", field="region") == "eu-west-1"


def test_parameter_expansion_is_bounded_in_size():
    secret = "s3cr3t-" * 10
    values = {"DOUBLE": "${HALF}${HALF}", "HALF": "${QUARTER}${QUARTER}", "QUARTER": secret * 30}
    for name in ("DOUBLE", "HALF"):
        with pytest.raises(ParameterError) as caught:
            resolve_text(f"x-${{{name}}}", chain(values), spec_name="s", field="description")
        message = str(caught.value)
        assert "image.description" in message and "KiB" in message and len(message) < 400
        assert "s3cr3t" not in message
    # Doubling at every level: refused before the text is made.
    values = {f"P{n}": f"${{P{n + 1}}}" * 2 for n in range(9)}
    values["P9"] = "x" * 4000
    with pytest.raises(ParameterError):
        resolve_text("${P0}", chain(values), spec_name="s", field="description")


def test_an_invalid_resolved_value_is_not_quoted():
    spec = parse_spec(spec_text(region="${REGION}", subnet="${SUBNET}"))
    for values in ({"REGION": "s3cr3t-region", "SUBNET": "subnet-01234567"},
                   {"REGION": "eu-west-1", "SUBNET": "s3cr3t/subnet"}):
        with pytest.raises(PermanentError) as caught:
            resolve(spec, chain(values))
        assert "s3cr3t" not in str(caught.value), str(caught.value)


# 6. A tests folder or a file in it that is a symbolic link


def test_a_linked_tests_folder_or_file_is_refused(tmp_path, monkeypatch):
    tests = tmp_path / "tests"
    (tests / "plain").mkdir(parents=True)
    (tests / "plain" / "test_a.py").write_text("def test_a(host): pass\n")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "test_b.py").write_text("def test_b(host): pass\n")
    (tests / "linked").symlink_to(tmp_path / "elsewhere")
    (tests / "with-link").mkdir()
    (tests / "with-link" / "test_c.py").symlink_to(tmp_path / "elsewhere" / "test_b.py")
    (tests / "nested-link" / "sub").mkdir(parents=True)
    (tests / "nested-link" / "test_d.py").write_text("def test_d(host): pass\n")
    (tests / "nested-link" / "sub" / "data").symlink_to("/etc/passwd")
    monkeypatch.setenv("AIRFLOW__IMAGE_FACTORY__TESTS_FOLDER", str(tests))

    def with_tests(folder: str) -> str:
        return spec_text(test=f"{{tool: testinfra, tests: {folder}}}")

    assert parse_spec(with_tests("plain")).test.tests == "plain"
    for folder, name in (("linked", "linked"), ("with-link", "test_c.py"), ("nested-link", "sub/data")):
        problems = dict(problems_of(with_tests(folder)))
        assert "image.test.tests" in problems or "image.test" in problems, problems
        message = problems.get("image.test.tests") or problems["image.test"]
        assert "symbolic link" in message and name in message


# 7. resolve:ssm: names public parameters or the factory's channels only


@pytest.mark.parametrize("origin", [
    "resolve:ssm:/image-factory/builds/b0123456789ab/ssh-private-key",
    "resolve:ssm:/my-team/secret",
    "resolve:ssm:/image-factory/some-image/latest/extra",
    "resolve:ssm:/aws/service/../../image-factory/builds/b1/ssh-private-key",
    "resolve:ssm:/aws/service",
    "resolve:ssm:/aws/services/x",
    "resolve:ssm:/image-factory/x/y/../../builds/b1/ssh-private-key",
])
def test_an_origin_parameter_must_be_public_or_a_channel(origin):
    [(field, message)] = problems_of(spec_text(origin=f'"{origin}"'))
    assert field == "image.origin"
    assert "/aws/service/" in message and "/image-factory/<spec>/<channel>" in message


@pytest.mark.parametrize("origin", [
    "resolve:ssm:/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64",
    "resolve:ssm:/aws/service/canonical/ubuntu/server/24.04/stable/current/amd64/hvm/ebs-gp3/ami-id",
    "resolve:ssm:/aws/service/debian/release/12/latest/amd64",
    "resolve:ssm:/image-factory/shopspinner-linux-image/latest",
])
def test_public_parameters_and_channels_are_fine(origin):
    assert parse_spec(spec_text(origin=f'"{origin}"')).origin == origin


def test_a_resolved_origin_obeys_the_same_rule():
    spec = parse_spec(spec_text(origin='"${ORIGIN}"'))
    with pytest.raises(ParameterError) as caught:
        resolve(spec, chain({"ORIGIN": "resolve:ssm:/image-factory/builds/b1/ssh-private-key"}))
    assert "/aws/service/" in str(caught.value) and "ssh-private-key" not in str(caught.value)
