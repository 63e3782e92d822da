"""The Airflow assets of Image Factory: a downstream DAG is scheduled on them."""

from __future__ import annotations

from airflow.sdk import Asset


def image_asset(spec_name: str) -> Asset:
    """Updated when an image of the spec is promoted (it passed its tests, and a channel moved to it); its
    events carry the image id, the region and the channels."""
    return Asset(name=f"image-factory/{spec_name}", uri=f"image-factory://images/{spec_name}")


def channel_asset(spec_name: str, channel: str) -> Asset:
    """Updated when the spec's image moves ``channel``: the specs built on that channel are scheduled on it."""
    return Asset(name=f"image-factory/{spec_name}/{channel}", uri=f"image-factory://images/{spec_name}/{channel}")


def promotion_assets(spec_name: str, channels: list[str]) -> list[Asset]:
    """What a promotion to ``channels`` emits events on: the spec's image asset, and each channel's."""
    return [image_asset(spec_name), *(channel_asset(spec_name, channel) for channel in channels)]


def origin_asset(spec_name: str) -> Asset:
    """Updated by the origin watcher when the spec's origin resolves to a new image."""
    return Asset(name=f"image-factory/{spec_name}/origin", uri=f"image-factory://origins/{spec_name}")
