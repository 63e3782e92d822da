"""What exists of the builds, found by the tags every build puts on it: builder resources, and what an image's
lineage tags say (shared by ``image-factory list`` and the Images page)."""

from __future__ import annotations

from image_factory.build import TAG_BUILD, TAG_COMPLETE, TAG_TESTS, TAG_TESTS_FAILED, TAG_TESTS_PASSED, tag_dict
from image_factory.steps import image, instance


def builder_resources(ec2, ssm, build_id: str) -> list[tuple[str, str]]:
    """Every live resource of the build that teardown is meant to delete, as (kind, id) pairs."""
    flt = [{"Name": f"tag:{TAG_BUILD}", "Values": [build_id]}]
    found = [("instance", i["InstanceId"]) for i in instance.find(ec2, build_id, [*instance.LIVE_STATES,
                                                                                  "shutting-down"])]
    found += [("image (incomplete)", i["ImageId"]) for i in image.find(ec2, build_id)
              if tag_dict(i.get("Tags")).get(TAG_COMPLETE) != "true"]
    found += [("key-pair", k["KeyName"]) for k in ec2.describe_key_pairs(Filters=flt)["KeyPairs"]]
    found += [("security-group", g["GroupId"]) for g in ec2.describe_security_groups(Filters=flt)["SecurityGroups"]]
    found += [("subnet", s["SubnetId"]) for s in ec2.describe_subnets(Filters=flt)["Subnets"]]
    found += [("vpc", v["VpcId"]) for v in ec2.describe_vpcs(Filters=flt)["Vpcs"]]
    parameters = ssm.describe_parameters(ParameterFilters=[
        {"Key": "Name", "Option": "BeginsWith", "Values": [f"/image-factory/builds/{build_id}/"]}])["Parameters"]
    found += [("ssm-parameter", p["Name"]) for p in parameters]
    return found


def tests_summary(tags: dict[str, str]) -> str:
    """An image's test result from its tags: ``passed (3/3)``, ``failed (2/3)``, ``untested`` or ``-``."""
    status = tags.get(TAG_TESTS, "-")
    if status in ("passed", "failed"):
        passed, failed = tags.get(TAG_TESTS_PASSED) or "0", tags.get(TAG_TESTS_FAILED) or "0"
        if passed.isascii() and passed.isdigit() and failed.isascii() and failed.isdigit():
            return f"{status} ({int(passed)}/{int(passed) + int(failed)})"
        # Tags anyone with CreateTags may have written: shown as they are, never an error.
        return f"{status} (tests-passed={passed[:40]!r}, tests-failed={failed[:40]!r})"
    return status


def channel_names(parameters: list[str], spec_name: str, prefix: str) -> list[str]:
    """The channels of ``spec_name`` among channel parameter names (``<prefix>/<spec>/<channel>``)."""
    own = f"{prefix.rstrip('/')}/{spec_name}/"
    return sorted(name[len(own):] for name in parameters if name.startswith(own) and "/" not in name[len(own):])
