"""The text a person reads before approving a promotion: the image, its lineage, its tests (Markdown)."""

from __future__ import annotations


def text(channels: list[str], registered: dict | None, tested: dict | None, promoted: dict | None,
         network: dict | None) -> str:
    registered, tested, network = registered or {}, tested or {}, network or {}
    lineage = network.get("origin_lineage") or {}
    origin = registered.get("origin", "?")
    if lineage:
        origin += f" (built by Image Factory: spec `{lineage.get('spec')}`, build `{lineage.get('build_id')}`)"
    rows = [
        ("image", f"`{registered.get('image_id', '?')}` `{registered.get('name', '')}`"),
        ("region", registered.get("region", "?")),
        ("built from", origin),
        ("server role", registered.get("server_role") or "none"),
        ("build", f"`{registered.get('build_id', '?')}`"),
        ("tests", f"{tested.get('status', '?')}: {tested.get('passed', 0)} passed, {tested.get('failed', 0)} failed"),
        ("channels moved already", ", ".join(f"{c} (version {v})" for c, v in (promoted or {}).get(
            "channels", {}).items()) or "none"),
        ("approving moves", ", ".join(channels)),
    ]
    overridden = registered.get("overridden") or {}
    if overridden:  # a person is about to put an image of another origin or role into the channels: say so
        rows.insert(0, ("**overridden by the trigger**", "**" + ", ".join(
            f"{field} `{value}`" for field, value in sorted(overridden.items())) + " (not the spec's)**"))
    copies = (promoted or {}).get("regions") or {}
    if len(copies) > 1:  # distributed: the channels move in every region, each to its region's copy
        rows.insert(2, ("copies", ", ".join(f"`{copy['image_id']}` in {region}" for region, copy in copies.items()
                                            if region != registered.get("region"))))
    return "\n".join(["| | |", "|---|---|", *(f"| {key} | {value} |" for key, value in rows)])
