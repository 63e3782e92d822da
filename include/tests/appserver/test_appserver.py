"""What the appserver role (include/roles/appserver/) leaves in the image, checked on a fresh boot of it.

Run by the `testinfra` test tool (spec `test: {tool: testinfra, tests: appserver}`): pytest-testinfra's
``host`` is the new image's test instance, reached over SSH with the build's key. The same tests check the
ansible tool's appserver role (include/ansible/shopspinner/roles/appserver/), which builds the same server.
"""

import logging

# The build's logger: what a test logs here goes to the test_image task's log (`make demo` shows the answer).
log = logging.getLogger("image_factory")


def setting(host, name: str) -> str:
    """A setting of /etc/shopspinner/appserver.conf (``name = value``)."""
    for line in host.file("/etc/shopspinner/appserver.conf").content_string.splitlines():
        key, _, value = line.partition("=")
        if key.strip() == name:
            return value.strip()
    raise AssertionError(f"no {name} in /etc/shopspinner/appserver.conf")


def test_the_configuration_is_in_place(host):
    config = host.file("/etc/shopspinner/appserver.conf")
    assert config.is_file
    assert config.user == "root"
    assert config.mode & 0o002 == 0  # nobody else may change it
    assert "listen_port = 8080" in config.content_string


def test_the_build_is_recorded(host):
    info = host.file("/etc/shopspinner/build-info")
    assert info.is_file
    assert info.content_string.startswith("build b")
    assert "role appserver" in info.content_string


def test_the_start_script_is_executable(host):
    script = host.file("/opt/shopspinner/appserver/start.sh")
    assert script.is_file and script.mode & 0o111
    assert "/etc/shopspinner/appserver.conf" in script.content_string


def test_the_service_is_installed_and_enabled(host):
    unit = host.file("/etc/systemd/system/shopspinner-appserver.service")
    assert unit.is_file
    assert "ExecStart=/opt/shopspinner/appserver/start.sh" in unit.content_string
    enabled = host.file("/etc/systemd/system/multi-user.target.wants/shopspinner-appserver.service")
    assert enabled.is_symlink and enabled.linked_to == "/etc/systemd/system/shopspinner-appserver.service"


def test_nginx_is_installed_from_debian(host):
    assert host.package("nginx-light").is_installed


def test_the_application_server_runs_after_boot(host):
    host.run("timeout 60 systemctl is-system-running --wait")  # the boot has finished (running or degraded)
    service = host.service("shopspinner-appserver")
    assert service.is_enabled
    assert service.is_running
    assert host.socket("tcp://127.0.0.1:8080").is_listening


def test_it_answers_with_the_page_the_role_wrote(host, capsys):
    answer = host.run("python3 -c 'import urllib.request; print(urllib.request.urlopen("
                      "\"http://127.0.0.1:8080/\", timeout=10).read().decode())'")
    assert answer.rc == 0, answer.stderr
    lines = answer.stdout.splitlines()
    # Quoted as data: the instance's answer, printable characters only, cut.
    shown = " | ".join("".join(c if c.isprintable() else "?" for c in line) for line in lines[:5] if line)[:300]
    with capsys.disabled():  # pytest captures what a test writes; the task's log is written to the output
        log.info("the application server answered on port 8080: %s", shown)
    assert lines[0] == "ShopSpinner appserver"
    assert lines[1].startswith("image ") and lines[2].startswith("build b")


def test_nginx_runs_the_workers_the_configuration_asks_for(host):
    workers = int(setting(host, "workers"))
    assert host.socket(f"tcp://127.0.0.1:{setting(host, 'listen_port')}").is_listening
    running = [p for p in host.process.filter(comm="nginx") if p.args.startswith("nginx: worker process")]
    assert len(running) == workers


def test_the_role_left_no_staging_folder_behind(host):
    assert host.run("ls -d /tmp/image-factory-role.* 2>/dev/null").stdout == ""
