"""The Images page: a FastAPI app that Airflow's api-server mounts at ``/image-factory`` (the plugin's
``fastapi_apps``), shown in the Airflow UI's navigation as *Images* (its ``external_views``).

``GET /image-factory/images?spec=&status=&limit=`` answers server-made HTML: per spec and region, every image
(catalog.py reads them from the cloud when the page is asked for, never at import). It sits behind Airflow's
own authentication, as the REST API does: the UI's session cookie or a bearer token from ``POST /auth/token``;
without one the answer is 401. A user sees the images of the specs whose DAG they may read. Every value shown
is escaped: tags are anyone's to write.

``GET /image-factory/sbom?region=&image=`` answers an image's SBOM (sbom.py), to the same users: those who may
read the DAG of the image's spec.
"""

from __future__ import annotations

import functools
import html
import secrets
from urllib.parse import quote, urlencode

from airflow.api_fastapi.app import get_auth_manager
from airflow.api_fastapi.auth.managers.models.resource_details import DagDetails
from airflow.api_fastapi.core_api.security import GetUserDep, requires_access_dag
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, Response

from image_factory import catalog as catalog_module
from image_factory.catalog import STATUSES, Catalog, ImageRow

URL_PREFIX = "/image-factory"
PATH = "/images"
SBOM_PATH = "/sbom"
DEFAULT_LIMIT = 100
MAX_LIMIT = 500

app = FastAPI(title="Image Factory", docs_url=None, redoc_url=None, openapi_url=None)


def _read_specs() -> tuple[list, list]:
    from image_factory import settings
    from image_factory.cli import DEFAULT_SPECS
    from image_factory.spec import load_specs

    folder = settings.specs_folder(DEFAULT_SPECS)
    return load_specs(folder) if folder.is_dir() else ([], [])


@app.get(PATH, response_class=HTMLResponse, dependencies=[Depends(requires_access_dag("GET"))])
def images(request: Request, user: GetUserDep, spec: str = "", status: str = "",
           limit: int = Query(DEFAULT_LIMIT, ge=1, le=MAX_LIMIT)) -> HTMLResponse:
    if status and status not in STATUSES:
        raise HTTPException(400, f"unknown status {status!r}: one of {', '.join(STATUSES)}")
    from image_factory.links import image_console_url
    from image_factory.spec import channel_prefix

    auth_manager = get_auth_manager()

    @functools.cache
    def allowed(dag_id: str) -> bool:
        return auth_manager.is_authorized_dag(method="GET", details=DagDetails(id=dag_id), user=user)

    loaded, spec_errors = _read_specs()
    found = catalog_module.gather([s.image for s in loaded], channel_prefix=channel_prefix(), spec=spec,
                                  status=status, limit=limit, allowed=allowed, console_url=image_console_url)
    # Airflow's own pages are beside this app's mount point (behind a proxy's path too).
    airflow_root = request.scope.get("root_path", "").removesuffix(URL_PREFIX)
    nonce = secrets.token_urlsafe(16)
    page = render(found, spec=spec, status=status, limit=limit, airflow_root=airflow_root, nonce=nonce,
                  spec_errors=len(spec_errors))
    return HTMLResponse(page, headers={
        "Content-Security-Policy": f"default-src 'none'; style-src 'nonce-{nonce}'; script-src 'nonce-{nonce}'; "
                                   "form-action 'self'; frame-ancestors 'self'; base-uri 'none'",
        "Cache-Control": "no-store"})


@app.get(SBOM_PATH, dependencies=[Depends(requires_access_dag("GET"))])
def image_sbom(user: GetUserDep, region: str = Query(pattern=r"^[a-z]{2}(-[a-z]+)+-[0-9]$"),
               image: str = Query(pattern=r"^ami-[0-9a-f]+$")) -> Response:
    """An image's SBOM (the document its image-factory:sbom tag points to), for a user who may read the DAG of
    the image's spec."""
    from image_factory import aws, sbom
    from image_factory.build import TAG_SPEC, tag_dict

    loaded, _ = _read_specs()
    conn_ids = {s.image.aws_conn_id for s in loaded} or {"aws_default"}
    for conn_id in sorted(conn_ids):
        clients = aws.clients(conn_id, region)
        found = clients.ec2.describe_images(Owners=["self"], Filters=[{"Name": "image-id", "Values": [image]}])[
            "Images"]
        if not found:
            continue
        tags = tag_dict(found[0].get("Tags"))
        if not get_auth_manager().is_authorized_dag(method="GET", details=DagDetails(id=tags.get(TAG_SPEC, "")),
                                                    user=user):
            raise HTTPException(403, "you may not read the DAG of this image's spec")
        try:
            uri = sbom.uri_of(tags)
        except sbom.SbomError as exc:
            raise HTTPException(409, str(exc)) from None
        if uri is None:
            raise HTTPException(404, f"image {image} has no SBOM")
        return Response(sbom.read(clients.s3, uri), media_type="application/vnd.cyclonedx+json",
                        headers={"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff",
                                 "Content-Security-Policy": "default-src 'none'; sandbox",
                                 "Content-Disposition": f'inline; filename="{image}.cdx.json"'})
    raise HTTPException(404, f"no image {image} in {region}")


# --- the HTML ---------------------------------------------------------------------------------------------

e = functools.partial(html.escape, quote=True)

STYLE = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1f2933; margin: 16px 24px;
       background: #fff; }
h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 18px; margin: 28px 0 4px; }
h3 { font-size: 14px; margin: 14px 0 6px; color: #52606d; font-weight: 600; }
.lead, .note { color: #52606d; margin: 0 0 12px; }
form.filters { display: flex; gap: 16px; align-items: end; padding: 10px 12px; background: #f5f7fa;
               border: 1px solid #e4e7eb; border-radius: 6px; margin: 12px 0; }
form.filters label { display: flex; flex-direction: column; font-size: 12px; color: #52606d; gap: 2px; }
select, button { font: inherit; padding: 4px 8px; }
button { background: #0b6bcb; color: #fff; border: 0; border-radius: 4px; padding: 5px 14px; cursor: pointer; }
table { border-collapse: collapse; width: 100%; margin-bottom: 8px; table-layout: fixed; }
th, td { text-align: left; vertical-align: top; padding: 6px 8px; border-bottom: 1px solid #e4e7eb; }
th { font-size: 12px; color: #52606d; background: #f5f7fa; white-space: nowrap; }
tbody tr:hover { background: #fafbfc; }
code { font: 12.5px ui-monospace, SFMono-Regular, Menlo, monospace; }
td { overflow-wrap: anywhere; }
.name { color: #7b8794; font-size: 12px; word-break: break-all; }
.badge { display: inline-block; font-size: 11.5px; padding: 0 7px; border-radius: 9px; margin: 2px 3px 0 0;
         background: #e4e7eb; color: #323f4b; white-space: nowrap; }
.badge.promoted, .badge.channel { background: #dbeafe; color: #1e40af; }
.badge.passed { background: #dcfce7; color: #166534; } .badge.failed { background: #fee2e2; color: #991b1b; }
.badge.incomplete, .badge.retiring { background: #ffedd5; color: #9a3412; }
.badge.deprecated { background: #e5e7eb; color: #4b5563; }
.badge.overridden { background: #fef3c7; color: #92400e; font-weight: 600; }
.badge.revoked { background: #991b1b; color: #fff; font-weight: 600; }
.action { font-weight: 600; } .action.will { color: #9a3412; } .action.keep { color: #166534; }
.reason { color: #52606d; font-size: 12.5px; }
.error { background: #fee2e2; color: #991b1b; padding: 8px 12px; border-radius: 6px; }
.muted { color: #9aa5b1; } a { color: #0b6bcb; }
"""

# In the Airflow UI the page is in a frame that may neither navigate the UI nor open windows; it is the UI's own
# origin, so a DAG run link moves the UI's router to the run and a console link opens from the UI's window.
SCRIPT = """
document.addEventListener("click", function (event) {
  var link = event.target.closest("a[data-airflow], a[target=_blank]");
  if (!link || window.top === window) return;
  try {
    if (link.hasAttribute("data-airflow")) {
      window.top.history.pushState(null, "", link.href);
      window.top.dispatchEvent(new PopStateEvent("popstate"));
    } else {
      window.top.open(link.href, "_blank", "noopener,noreferrer");
    }
    event.preventDefault();
  } catch (error) { /* not the UI's frame: the link works as a link */ }
});
"""

#: The columns and their share of the width (the same in every table of the page).
COLUMNS = {"Image": 19, "Created": 8, "Origin": 11, "Role": 7, "Tests": 7, "Channels": 7, "Shared with": 10,
           "Deprecation": 8, "Retention": 17, "Links": 6}
COLUMN_WIDTHS = "".join(f"col:nth-child({n}) {{ width: {share}%; }}\n" for n, share in enumerate(COLUMNS.values(), 1))


def _badge(text: str, kind: str = "") -> str:
    return f'<span class="badge {e(kind or text)}">{e(text)}</span>'


def _options(values: list[tuple[str, str]], chosen: str) -> str:
    return "".join(f'<option value="{e(value)}"{" selected" if value == chosen else ""}>{e(label)}</option>'
                   for value, label in values)


def _row(row: ImageRow, airflow_root: str) -> str:
    state = "" if row.state == "available" else f" {_badge(row.state or '?', 'incomplete')}"
    image = (f'<code>{e(row.image_id)}</code>{state}<div class="name">{e(row.name)}</div>'
             + "".join(_badge(s) for s in row.statuses if s not in ("overridden", "revoked"))
             + (f'<span class="badge overridden" title="its build\'s trigger overrode: {e(row.overridden)}">'
                f'overridden: {e(row.overridden)}</span>' if row.overridden else "")
             + (f'<span class="badge revoked" title="{e(row.revoked)}">{e(row.revoked)}</span>'
                if row.revoked else ""))
    tests = row.tests
    tests_cell = (_badge(tests, tests.split()[0]) if tests.split()[0] in ("passed", "failed")
                  else f'<span class="muted">{e(tests)}</span>')
    channels = "".join(_badge(c, "channel") for c in row.channels) or '<span class="muted">-</span>'
    if row.shared_with is None:
        shared = f'<span class="muted" title="{e(row.shared_error)}">not read</span>'
    else:
        shared = "<br>".join(e(s) for s in row.shared_with) or '<span class="muted">not shared</span>'
    action, reason = row.retention
    retention = (f'<span class="action {"will" if action.startswith("will ") else e(action)}">{e(action)}</span>'
                 f'<div class="reason">{e(reason)}</div>')
    links = []
    if row.run_id:
        run_url = f"{airflow_root}/dags/{quote(row.spec, safe='')}/runs/{quote(row.run_id, safe='')}"
        links.append(f'<a href="{e(run_url)}" data-airflow title="{e(row.run_id)}">DAG run</a>')
    if row.sbom_packages:
        sbom_url = f"sbom?{urlencode({'region': row.region, 'image': row.image_id})}"
        links.append(f'<a href="{e(sbom_url)}" target="_blank" rel="noopener noreferrer">SBOM</a> '
                     f'<span class="muted">({e(row.sbom_packages)} packages)</span>')
    if row.console_url:
        links.append(f'<a href="{e(row.console_url)}" target="_blank" rel="noopener noreferrer">console</a>')
    cells = [image, e(row.created), f"<code>{e(row.origin)}</code>", e(row.role), tests_cell, channels, shared,
             e(row.deprecation) or '<span class="muted">-</span>', retention, " · ".join(links)]
    return f'<tr data-image="{e(row.image_id)}">' + "".join(f"<td>{cell}</td>" for cell in cells) + "</tr>"


def render(found: Catalog, *, spec: str, status: str, limit: int, airflow_root: str = "", nonce: str = "",
           spec_errors: int = 0) -> str:
    """The page's HTML."""
    spec_choices = [("", "all specs"), *((name, name) for name in found.specs)]
    if spec and spec not in found.specs:
        spec_choices.append((spec, spec))
    status_choices = [("", "any status"), *((name, f"{name}: {meaning}") for name, meaning in STATUSES.items())]
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        "<title>Images · Image Factory</title>",
        f"<style nonce='{e(nonce)}'>{STYLE}{COLUMN_WIDTHS}</style></head><body>",
        "<h1>Images</h1>",
        "<p class='lead'>Every image of the specs, per spec and region, read from the cloud just now: its lineage "
        "tags, tests and channels, who may launch it, and what the retention DAG would do with it today.</p>",
        "<form class='filters' method='get'>",
        f"<label>Spec<select name='spec'>{_options(spec_choices, spec)}</select></label>",
        f"<label>Status<select name='status'>{_options(status_choices, status)}</select></label>",
        *([f"<input type='hidden' name='limit' value='{limit}'>"] if limit != DEFAULT_LIMIT else []),
        "<button type='submit'>Filter</button></form>",
    ]
    calls = sum(found.calls.values())
    regions = ", ".join(found.regions) or "no region"
    parts.append(f"<p class='note'>{found.matched} image{'s' if found.matched != 1 else ''} in {e(regions)} "
                 f"· {calls} API call{'s' if calls != 1 else ''}</p>")
    for where, error in sorted(found.errors.items()):
        parts.append(f"<p class='error'>Could not read {e(where)}: {e(error)}. Its images are missing, and the "
                     "retention status of the others does not know what protects them there.</p>")
    if spec_errors:
        parts.append(f"<p class='note'>{spec_errors} spec file{'s' if spec_errors != 1 else ''} could not be "
                     "loaded (see the DAG processor's log); their images show under the spec their tags name.</p>")
    if found.matched > len(found.rows):
        more = urlencode({"spec": spec, "status": status, "limit": min(MAX_LIMIT, found.matched)})
        parts.append(f"<p class='note'>Showing the newest {len(found.rows)} of {found.matched}: choose a spec or a "
                     f"status, or <a href='?{e(more)}'>show more</a>.</p>")
    if not found.rows:
        parts.append("<p class='note'>No image matches.</p>")
    groups: dict[str, dict[str, list[ImageRow]]] = {}
    for row in found.rows:
        groups.setdefault(row.spec, {}).setdefault(row.region, []).append(row)
    header = ("<colgroup>" + "<col>" * len(COLUMNS) + "</colgroup><thead><tr>"
              + "".join(f"<th>{e(c)}</th>" for c in COLUMNS) + "</tr></thead>")
    for name, regions_of_spec in groups.items():
        parts.append(f"<section data-spec='{e(name)}'><h2>{e(name)}</h2>")
        for region, rows in regions_of_spec.items():
            parts.append(f"<h3>{e(region)} · {len(rows)} image{'s' if len(rows) != 1 else ''}</h3>")
            parts.append(f"<table data-region='{e(region)}'>{header}<tbody>")
            parts.extend(_row(row, airflow_root) for row in rows)
            parts.append("</tbody></table>")
        parts.append("</section>")
    parts.append(f"<script nonce='{e(nonce)}'>{SCRIPT}</script></body></html>")
    return "\n".join(parts)
