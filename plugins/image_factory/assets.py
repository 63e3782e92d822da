"""The Airflow assets of Image Factory: a downstream DAG is scheduled on them."""

from __future__ import annotations

from airflow.sdk import Asset


def image_asset(spec_name: str) -> Asset:
    """Updated by every successful build of the spec; its events carry the image id and region."""
    return Asset(name=f"image-factory/{spec_name}", uri=f"image-factory://images/{spec_name}")


def origin_asset(spec_name: str) -> Asset:
    """Updated by the origin watcher when the spec's origin resolves to a new image."""
    return Asset(name=f"image-factory/{spec_name}/origin", uri=f"image-factory://origins/{spec_name}")
