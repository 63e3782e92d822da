"""The Airflow UI as a person uses it: headless Chromium (Debian's, driven by Playwright) against the four real
Airflow components (localcloud/airflow_stack.py) on the local cloud.

Logs in, opens the shopspinner-linux-image DAG, triggers it through the Trigger form with the instance size
changed to `medium`, waits for the run to succeed under the real scheduler, opens the configure task's log,
finds the role's output and saves a screenshot of the finished run (test-artifacts/browser/). The emulator
then shows that the builder instance was a t3.medium: the form's value reached the build. Then a person approves
a promotion of the layered example (built on the run's `latest`) on its task's Required Action tab, and its
`production` channel moves (screenshots approval.png, approved.png). Last, the Images page, opened from the
UI's navigation, shows the built image with its `latest` channel and its passed tests (images-page.png).

With IMAGE_FACTORY_DOCS_SCREENSHOTS=1 (`make screenshots`) it also saves the docs' screenshots (the viewport only:
1280x800, the Images page at the test's 1600x1000) into docs/images/ under stable names: grid.png,
configure-log.png, approval.png, images-page.png.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from pathlib import Path
from urllib.parse import quote

import pytest

from image_factory.build import TAG_BUILD, build_id_for
from localcloud.airflow_stack import AirflowStack
from localcloud.cloud import PROJECT, free_port

CHROMIUM = "/usr/bin/chromium"
# Everything that would make Chromium talk to anything but the page it is given stays off.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
DAG_ID = "shopspinner-linux-image"
LAYERED = "shopspinner-webapp-image"
PARAM = "instance_size"
CHANGED_TO = "medium"
EXPECTED_INSTANCE_TYPE = "t3.medium"
ROLE_OUTPUT = "appserver role: done"
RUN_TIMEOUT = 300  # seconds: the whole build under the real scheduler takes about one minute
ARTIFACTS = PROJECT / "test-artifacts" / "browser"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# `make screenshots`: the docs' copies (committed, referenced from README.md and docs/*.md).
DOCS_IMAGES = PROJECT / "docs" / "images" if os.environ.get("IMAGE_FACTORY_DOCS_SCREENSHOTS") else None
DOCS_VIEWPORT = {"width": 1280, "height": 800}

if not Path(CHROMIUM).exists():
    pytest.skip(f"{CHROMIUM} is missing: Debian's chromium package is not installed and this test does not "
                "install it (scripts/setup.sh, run by `make test` and CI, does)", allow_module_level=True)
sync_playwright = pytest.importorskip("playwright.sync_api", reason="playwright is in requirements.txt: "
                                      "run scripts/setup.sh").sync_playwright


@pytest.fixture(scope="module")
def airflow_ui(local_cloud, tmp_path_factory):
    # The shipped spec, and the example built on its `latest` channel whose `production` needs an approval.
    specs = tmp_path_factory.mktemp("browser-specs")
    for source in (PROJECT / "include" / "specs" / f"{DAG_ID}.yaml",
                   PROJECT / "include" / "examples" / f"{LAYERED}.yaml"):
        (specs / source.name).write_text(source.read_text())
    stack = AirflowStack(tmp_path_factory.mktemp("airflow-ui") / "home", local_cloud, free_port(),
                         extra_env={"AIRFLOW__IMAGE_FACTORY__SPECS_FOLDER": str(specs)})
    started = time.monotonic()
    stack.start()
    try:
        stack.wait_until_healthy(timeout=300)
        stack.wait_for_dag(DAG_ID, timeout=180)
        print(f"\nbrowser: Airflow up at {stack.url} in {time.monotonic() - started:.0f} s")
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def docs_screenshot(page, name: str, viewport: dict | None = DOCS_VIEWPORT) -> None:
    """With IMAGE_FACTORY_DOCS_SCREENSHOTS set, the page as it is now into docs/images/<name> at ``viewport``
    (None: the test's own), the viewport only, to keep the files small; then the test's own viewport back."""
    if DOCS_IMAGES is None:
        return
    own = page.viewport_size
    if viewport:
        page.set_viewport_size(viewport)
        page.wait_for_timeout(1000)  # the UI lays itself out again for the new size
    DOCS_IMAGES.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(DOCS_IMAGES / name))
    assert (DOCS_IMAGES / name).read_bytes()[:8] == PNG_MAGIC
    print(f"browser: docs screenshot {DOCS_IMAGES / name}")
    if viewport:
        page.set_viewport_size(own)


def log_in(page, stack: AirflowStack) -> None:
    username, password = stack.credentials()
    page.goto(stack.url + "/")
    page.wait_for_url("**/auth/login**")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(lambda url: "/auth/login" not in url)


def trigger_with_form(page, stack: AirflowStack, param: str, value: str) -> None:
    """The DAG page's Trigger button, the form's field of ``param`` set to ``value``, then the form's Trigger."""
    page.goto(f"{stack.url}/dags/{DAG_ID}")
    page.get_by_role("button", name="Trigger Dag").click()
    dialog = page.get_by_role("dialog")
    dialog.get_by_text("Run Parameters").wait_for()
    # Airflow names each param's input element_<param>; its label is the param's title.
    field = dialog.locator(f"[name='element_{param}']")
    assert field.count() == 1, f"the trigger form has no field for the param {param!r}: does the DAG declare it?"
    field.fill(value)
    unpause = dialog.get_by_label(f"Unpause {DAG_ID} on trigger")
    if unpause.count():  # offered while the DAG is paused (nightly DAGs are created paused): the run needs it
        unpause.check()
    dialog.get_by_role("button", name="Trigger").last.click()
    dialog.wait_for(state="hidden")


def manual_run_with(stack: AirflowStack, param: str, value: str, timeout: float = 60) -> dict:
    """The DAG run the form created, found by its conf."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = stack.api("GET", f"/dags/{DAG_ID}/dagRuns?run_type=manual&order_by=-run_after")["dag_runs"]
        for run in runs:
            if (run.get("conf") or {}).get(param) == value:
                return run
        time.sleep(1)
    raise AssertionError(f"no manual run of {DAG_ID} with {param}={value!r} after {timeout} s")


def wait_for_run(stack: AirflowStack, run_id: str, states: tuple[str, ...], timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    run = {}
    while time.monotonic() < deadline:
        run = stack.api("GET", f"/dags/{DAG_ID}/dagRuns/{quote(run_id, safe='')}")
        if run["state"] in states:
            return run
        time.sleep(2)
    raise AssertionError(f"run {run_id} still {run.get('state')} after {timeout} s")


def task_states(stack: AirflowStack, run_id: str) -> dict[str, str]:
    answer = stack.api("GET", f"/dags/{DAG_ID}/dagRuns/{quote(run_id, safe='')}/taskInstances")
    return {ti["task_id"]: ti["state"] for ti in answer["task_instances"]}


def settle(stack: AirflowStack, timeout: float = RUN_TIMEOUT) -> None:
    """Let every run of the DAG end, then pause it again.

    Unpausing a nightly DAG makes the scheduler add the latest missed nightly run (catchup is off, so just
    that one) once the manual run is done; it is a whole build, which must tear down what it creates.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = stack.api("GET", f"/dags/{DAG_ID}/dagRuns")["dag_runs"]
        if all(run["state"] in ("success", "failed") for run in runs):
            break
        time.sleep(2)
    else:
        raise AssertionError(f"runs of {DAG_ID} still going after {timeout} s")
    stack.api("PATCH", f"/dags/{DAG_ID}", {"is_paused": True})


def test_trigger_from_the_form_and_read_the_run_in_the_ui(airflow_ui, browser, ec2):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    screenshot = ARTIFACTS / "finished-run.png"
    screenshot.unlink(missing_ok=True)
    context = browser.new_context(viewport={"width": 1600, "height": 1000})
    context.set_default_timeout(60_000)
    page = context.new_page()
    try:
        log_in(page, airflow_ui)
        started = time.monotonic()
        trigger_with_form(page, airflow_ui, PARAM, CHANGED_TO)
        run = manual_run_with(airflow_ui, PARAM, CHANGED_TO)
        run_id = run["dag_run_id"]
        # Unpausing lets the scheduler add the latest missed nightly run too, which may go first (one run at a
        # time): the manual run waits for it, then has RUN_TIMEOUT of its own.
        wait_for_run(airflow_ui, run_id, ("running", "success", "failed"), RUN_TIMEOUT)
        queued = time.monotonic() - started
        run = wait_for_run(airflow_ui, run_id, ("success", "failed"), RUN_TIMEOUT)
        took = time.monotonic() - started - queued
        states = task_states(airflow_ui, run_id)
        assert run["state"] == "success", f"run {run_id} {run['state']} after {took:.0f} s: {states}"
        print(f"\nbrowser: run {run_id} queued {queued:.0f} s, ran {took:.0f} s: {run['state']}")
        assert set(states.values()) == {"success"}, states

        run_page = f"{airflow_ui.url}/dags/{DAG_ID}/runs/{quote(run_id, safe='')}"
        # The configure task's log, as the UI shows it: the role's own output streamed over SSH.
        page.goto(f"{run_page}/tasks/configure")
        page.get_by_text(ROLE_OUTPUT).first.wait_for()
        page.screenshot(path=str(ARTIFACTS / "configure-log.png"))
        docs_screenshot(page, "configure-log.png")

        # The finished run: its page, the grid and the task instances, all green.
        page.goto(run_page)
        page.get_by_text(run_id).first.wait_for()
        page.get_by_text("tear_down").first.wait_for()
        page.wait_for_load_state("networkidle")
        page.screenshot(path=str(screenshot), full_page=True)
        docs_screenshot(page, "grid.png")
    except Exception:
        with contextlib.suppress(Exception):
            page.screenshot(path=str(ARTIFACTS / "failure.png"), full_page=True)
        with contextlib.suppress(Exception):  # leave the cloud clean, but report the first failure
            settle(airflow_ui)
        raise
    finally:
        context.close()
    settle(airflow_ui)

    assert screenshot.exists() and screenshot.read_bytes()[:8] == PNG_MAGIC

    # The form's value took effect: the build's instance (terminated by tear_down, still listed) was a t3.medium.
    build_id = build_id_for(DAG_ID, run_id)
    reservations = ec2.describe_instances(Filters=[{"Name": f"tag:{TAG_BUILD}", "Values": [build_id]}])
    types = {i["InstanceType"] for r in reservations["Reservations"] for i in r["Instances"]}
    assert types == {EXPECTED_INSTANCE_TYPE}, f"build {build_id} ran on {types}"
    print(f"browser: build {build_id} ran on {EXPECTED_INSTANCE_TYPE}; screenshot {screenshot}")



def test_approve_a_promotion_in_the_ui(airflow_ui, browser, ssm):
    """The layered example's build waits for a person; its approval, given on the task's page in the UI, moves
    its `production` channel (the run above promoted the base image's `latest`, which it is built on)."""
    stack = airflow_ui
    stack.api("PATCH", f"/dags/{LAYERED}", {"is_paused": False})
    run_id = stack.api("POST", f"/dags/{LAYERED}/dagRuns", {"logical_date": None, "conf": {}})["dag_run_id"]
    path = f"/dags/{LAYERED}/dagRuns/{quote(run_id, safe='')}"
    deadline = time.monotonic() + RUN_TIMEOUT
    states = {}
    while time.monotonic() < deadline:
        states = {t["task_id"]: t["state"] for t in stack.api("GET", f"{path}/taskInstances")["task_instances"]}
        if states.get("approve_promotion") == "awaiting_input" or "failed" in states.values():
            break
        time.sleep(2)
    assert states.get("approve_promotion") == "awaiting_input", states
    context = browser.new_context(viewport={"width": 1600, "height": 1000})
    context.set_default_timeout(60_000)
    page = context.new_page()
    try:
        log_in(page, stack)
        page.goto(f"{stack.url}/dags/{LAYERED}/runs/{quote(run_id, safe='')}/tasks/approve_promotion")
        # The task's "Required Action" tab: the question, the image's lineage and tests, and the options.
        page.get_by_role("tab", name="Required Action").or_(page.get_by_text("Required Action")).first.click()
        page.get_by_text("Promote a new").first.wait_for()
        page.get_by_text("approving moves").first.wait_for()
        page.screenshot(path=str(ARTIFACTS / "approval.png"), full_page=True)
        docs_screenshot(page, "approval.png")
        page.get_by_role("button", name="Approve").first.click()
        deadline = time.monotonic() + RUN_TIMEOUT
        while time.monotonic() < deadline and stack.api("GET", path)["state"] not in ("success", "failed"):
            time.sleep(2)
        page.reload()
        page.wait_for_load_state("networkidle")
        page.screenshot(path=str(ARTIFACTS / "approved.png"), full_page=True)
    except Exception:
        with contextlib.suppress(Exception):
            page.screenshot(path=str(ARTIFACTS / "approval-failure.png"), full_page=True)
        raise
    finally:
        context.close()
        stack.api("PATCH", f"/dags/{LAYERED}", {"is_paused": True})
    states = {t["task_id"]: t["state"] for t in stack.api("GET", f"{path}/taskInstances")["task_instances"]}
    assert states["promote_approved"] == "success", states
    image_id = ssm.get_parameter(Name=f"/image-factory/{LAYERED}/latest")["Parameter"]["Value"]
    assert ssm.get_parameter(Name=f"/image-factory/{LAYERED}/production")["Parameter"]["Value"] == image_id
    print(f"browser: approved in the UI; {LAYERED} production -> {image_id}")


def test_the_images_page_shows_the_built_image(airflow_ui, browser, ssm):
    """The Images page, opened from the UI's navigation: the image the run above built and promoted is there,
    with its `latest` channel and its passed tests; its DAG run link opens the run in the UI."""
    stack = airflow_ui
    image_id = ssm.get_parameter(Name=f"/image-factory/{DAG_ID}/latest")["Parameter"]["Value"]
    screenshot = ARTIFACTS / "images-page.png"
    screenshot.unlink(missing_ok=True)
    context = browser.new_context(viewport={"width": 1600, "height": 1000})
    context.set_default_timeout(60_000)
    page = context.new_page()
    try:
        log_in(page, stack)
        page.get_by_role("link", name="Images").or_(page.get_by_role("button", name="Images")).first.click()
        page.wait_for_url("**/plugin/images**")
        frame = page.frame_locator("iframe[title='Images']")
        row = frame.locator(f"tr[data-image='{image_id}']")
        row.wait_for()
        assert "latest" in row.inner_text()
        assert "passed (" in row.inner_text()
        section = frame.locator(f"section[data-spec='{DAG_ID}']")
        assert section.locator("table[data-region='eu-west-1']").count() == 1
        page.wait_for_load_state("networkidle")
        page.screenshot(path=str(screenshot))
        docs_screenshot(page, "images-page.png", viewport=None)  # its table needs the 1600 pixels
        # The filters: the spec and the status `promoted` keep the row; `failed` drops it.
        frame.locator("select[name='spec']").select_option(DAG_ID)
        frame.locator("select[name='status']").select_option("promoted")
        frame.get_by_role("button", name="Filter").click()
        frame.get_by_text(re.compile(r"^1 image in eu-west-1")).wait_for()  # the channel's image only
        frame.locator(f"tr[data-image='{image_id}']").wait_for()
        frame.locator("select[name='status']").select_option("failed")
        frame.get_by_role("button", name="Filter").click()
        frame.get_by_text("No image matches").wait_for()
        frame.locator("select[name='status']").select_option("")
        frame.get_by_role("button", name="Filter").click()
        # From the frame, the DAG run link moves the UI itself to the run's page.
        frame.locator(f"tr[data-image='{image_id}'] a", has_text="DAG run").click()
        page.wait_for_url(f"**/dags/{DAG_ID}/runs/**")
        assert "/plugin/" not in page.url
        page.get_by_text("tear_down").first.wait_for()
    except Exception:
        with contextlib.suppress(Exception):
            page.screenshot(path=str(ARTIFACTS / "images-page-failure.png"), full_page=True)
        raise
    finally:
        context.close()
    assert screenshot.exists() and screenshot.read_bytes()[:8] == PNG_MAGIC
    print(f"browser: the Images page shows {image_id} (latest, passed); screenshot {screenshot}")
