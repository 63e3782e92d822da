"""What builder resources exist, found by the tags every build puts on them."""

from __future__ import annotations

from image_factory.build import TAG_BUILD, TAG_COMPLETE, tag_dict
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
