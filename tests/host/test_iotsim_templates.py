"""iotsim's provisioning templates: AWS's format, every intrinsic, and the refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tools.iotsim.templates import (
    DEMO_TEMPLATE_NAME,
    MAX_TEMPLATE_CHARS,
    ROTATION_TEMPLATE_NAME,
    PolicySpec,
    Template,
    TemplateError,
    TemplateStore,
    builtin_template_text,
    demo_template_text,
)

CERT_ID = "ab" * 32


def template(body: dict, name: str = "T") -> Template:
    return Template.from_json(name, json.dumps(body))


def config_of(expr: object, params: dict[str, str] | None = None, **sections: object) -> str:
    body = {"Parameters": {"P": {"Type": "String", "Default": "a,b,c"}}, "DeviceConfiguration": {"v": expr}}
    body.update(sections)
    return template(body).evaluate(params or {}, CERT_ID).device_configuration["v"]


def test_ref_returns_the_request_parameter_over_the_default() -> None:
    assert config_of({"Ref": "P"}, {"P": "given"}) == "given"
    assert config_of({"Ref": "P"}) == "a,b,c"


def test_ref_to_the_certificate_id_pseudo_parameter_is_the_certificate_being_provisioned() -> None:
    assert config_of({"Ref": "AWS::IoT::Certificate::Id"}) == CERT_ID


def test_join_concatenates_with_the_delimiter() -> None:
    assert config_of({"Fn::Join": ["-", ["x", {"Ref": "P"}, "y"]]}) == "x-a,b,c-y"


def test_split_then_select_picks_one_element() -> None:
    assert config_of({"Fn::Select": [1, {"Fn::Split": [",", {"Ref": "P"}]}]}) == "b"
    assert config_of({"Fn::Select": ["2", {"Fn::Split": [",", {"Ref": "P"}]}]}) == "c"


def test_select_out_of_range_is_refused_with_400() -> None:
    with pytest.raises(TemplateError) as err:
        config_of({"Fn::Select": [7, {"Fn::Split": [",", {"Ref": "P"}]}]})
    assert err.value.status_code == 400
    assert "out of range" in err.value.message


def test_find_in_map_looks_up_with_an_evaluated_key() -> None:
    mappings = {"Table": {"a,b,c": {"Url": "https://one"}, "z": {"Url": "https://two"}}}
    assert config_of({"Fn::FindInMap": ["Table", {"Ref": "P"}, "Url"]}, Mappings=mappings) == "https://one"
    assert (
        config_of({"Fn::FindInMap": ["Table", {"Ref": "P"}, "Url"]}, {"P": "z"}, Mappings=mappings)
        == "https://two"
    )


def test_find_in_map_with_an_unknown_key_is_refused_naming_the_key() -> None:
    mappings = {"Table": {"a": {"Url": "u"}}}
    with pytest.raises(TemplateError) as err:
        config_of({"Fn::FindInMap": ["Table", {"Ref": "P"}, "Url"]}, {"P": "nowhere"}, Mappings=mappings)
    assert err.value.status_code == 400
    assert "nowhere" in err.value.message


def test_sub_replaces_parameters_and_its_own_variables_and_keeps_escaped_ones() -> None:
    assert config_of({"Fn::Sub": "pre-${P}-post"}, {"P": "v"}) == "pre-v-post"
    assert config_of({"Fn::Sub": ["${Greeting} ${P}", {"Greeting": "hi"}]}, {"P": "v"}) == "hi v"
    assert config_of({"Fn::Sub": "${!Literal}"}) == "${Literal}"
    assert config_of({"Fn::Sub": "id=${AWS::IoT::Certificate::Id}"}) == "id=" + CERT_ID


def test_sub_with_an_unknown_variable_is_refused() -> None:
    with pytest.raises(TemplateError) as err:
        config_of({"Fn::Sub": "${Nope}"})
    assert "Nope" in err.value.message


def test_nested_intrinsics_compose() -> None:
    expr = {"Fn::Join": ["", [{"Fn::Select": [0, {"Fn::Split": [",", {"Fn::Sub": "${P},q"}]}]}, "!"]]}
    assert config_of(expr, {"P": "first"}) == "first!"


def test_hostile_nesting_is_refused_not_recursed_forever() -> None:
    expr: object = "x"
    for _ in range(200):
        expr = {"Fn::Join": ["", [expr]]}
    with pytest.raises(TemplateError):
        config_of(expr)


def test_unsupported_intrinsic_is_refused_at_evaluation() -> None:
    with pytest.raises(TemplateError) as err:
        config_of({"Fn::GetAtt": ["a", "b"]})
    assert "Fn::GetAtt" in err.value.message


def test_missing_required_parameter_is_refused_with_400_naming_it() -> None:
    t = template({"Parameters": {"SerialNumber": {"Type": "String"}}})
    with pytest.raises(TemplateError) as err:
        t.evaluate({}, CERT_ID)
    assert err.value.status_code == 400
    assert err.value.error_code == "InvalidParameters"
    assert "SerialNumber" in err.value.message


def test_number_parameter_must_be_numeric() -> None:
    t = template({"Parameters": {"N": {"Type": "Number"}}})
    assert t.evaluate({"N": "12"}, CERT_ID).parameters["N"] == "12"
    with pytest.raises(TemplateError):
        t.evaluate({"N": "twelve"}, CERT_ID)


def test_parameters_that_are_not_strings_are_refused() -> None:
    t = template({"Parameters": {"N": {"Type": "String"}}})
    with pytest.raises(TemplateError) as err:
        t.evaluate({"N": 5}, CERT_ID)
    assert err.value.status_code == 400


def test_thing_resource_evaluates_every_property_and_keeps_override_settings() -> None:
    t = template(
        {
            "Parameters": {"S": {"Type": "String"}},
            "Resources": {
                "thing": {
                    "Type": "AWS::IoT::Thing",
                    "Properties": {
                        "ThingName": {"Fn::Join": ["", ["dev-", {"Ref": "S"}]]},
                        "AttributePayload": {"serial": {"Ref": "S"}, "v": "1"},
                        "ThingTypeName": "sensor",
                        "ThingGroups": ["g1", {"Ref": "S"}],
                        "BillingGroup": "b",
                    },
                    "OverrideSettings": {"AttributePayload": "MERGE", "ThingTypeName": "REPLACE"},
                }
            },
        }
    )
    plan = t.evaluate({"S": "42"}, CERT_ID)
    assert plan.thing is not None
    assert plan.thing.name == "dev-42"
    assert plan.thing.attributes == {"serial": "42", "v": "1"}
    assert plan.thing.thing_type == "sensor"
    assert plan.thing.groups == ["g1", "42"]
    assert plan.thing.billing_group == "b"
    assert plan.thing.overrides == {"AttributePayload": "MERGE", "ThingTypeName": "REPLACE"}


def test_invalid_thing_name_is_refused() -> None:
    t = template(
        {
            "Parameters": {"S": {"Type": "String"}},
            "Resources": {"thing": {"Type": "AWS::IoT::Thing", "Properties": {"ThingName": {"Ref": "S"}}}},
        }
    )
    with pytest.raises(TemplateError) as err:
        t.evaluate({"S": "has space"}, CERT_ID)
    assert "has space" in err.value.message


def test_certificate_status_defaults_to_active_and_follows_the_template() -> None:
    cert = {
        "Type": "AWS::IoT::Certificate",
        "Properties": {"CertificateId": {"Ref": "AWS::IoT::Certificate::Id"}},
    }
    assert template({"Resources": {"c": cert}}).evaluate({}, CERT_ID).certificate_status == "ACTIVE"
    assert template({}).evaluate({}, CERT_ID).certificate_status == "ACTIVE"
    cert["Properties"]["Status"] = "Inactive"  # type: ignore[index]
    assert template({"Resources": {"c": cert}}).evaluate({}, CERT_ID).certificate_status == "INACTIVE"


def test_certificate_resource_naming_another_certificate_is_refused() -> None:
    cert = {"Type": "AWS::IoT::Certificate", "Properties": {"CertificateId": "cd" * 32}}
    with pytest.raises(TemplateError):
        template({"Resources": {"c": cert}}).evaluate({}, CERT_ID)


def test_bad_certificate_status_is_refused() -> None:
    cert = {
        "Type": "AWS::IoT::Certificate",
        "Properties": {"CertificateId": {"Ref": "AWS::IoT::Certificate::Id"}, "Status": "REVOKED"},
    }
    with pytest.raises(TemplateError):
        template({"Resources": {"c": cert}}).evaluate({}, CERT_ID)


def test_policy_by_name_and_by_inline_document() -> None:
    t = template(
        {
            "Resources": {
                "named": {"Type": "AWS::IoT::Policy", "Properties": {"PolicyName": "DevicePolicy"}},
                "inline": {
                    "Type": "AWS::IoT::Policy",
                    "Properties": {"PolicyDocument": {"Version": "2012-10-17"}},
                },
            }
        },
        name="Tpl",
    )
    policies = {p.name: p.document for p in t.evaluate({}, CERT_ID).policies}
    assert policies["DevicePolicy"] is None
    assert json.loads(policies["Tpl-inline"]) == {"Version": "2012-10-17"}


@pytest.mark.parametrize(
    "body",
    [
        {"Resources": {"x": {"Type": "AWS::S3::Bucket"}}},
        {"Resources": {"x": {"Type": "AWS::IoT::Thing", "Properties": {}}}},
        {"Resources": {"x": {"Type": "AWS::IoT::Thing", "Properties": {"ThingName": "a", "Colour": "red"}}}},
        {
            "Resources": {
                "x": {
                    "Type": "AWS::IoT::Thing",
                    "Properties": {"ThingName": "a"},
                    "OverrideSettings": {"ThingTypeName": "MERGE"},
                }
            }
        },
        {"Resources": {"x": {"Type": "AWS::IoT::Policy", "Properties": {}}}},
        {"Resources": {"x": {"Type": "AWS::IoT::Certificate", "Properties": {}}}},
        {"Parameters": {"p": {"Type": "List"}}},
        {"Parameters": []},
        {"Mappings": {"m": {"k": "not an object"}}},
        {"Surprise": {}},
        {"Conditions": {"IsLab": {"Fn::Equals": ["a", "a"]}}},
    ],
    ids=[
        "unknown-type",
        "thing-without-name",
        "unknown-thing-property",
        "merge-on-scalar",
        "policy-without-name-or-document",
        "certificate-without-id",
        "bad-parameter-type",
        "parameters-not-object",
        "bad-mapping",
        "unknown-section",
        "conditions",
    ],
)
def test_invalid_templates_are_refused_when_loaded(body: dict) -> None:
    with pytest.raises(TemplateError) as err:
        template(body)
    assert err.value.status_code == 400


def test_template_body_over_10240_characters_is_refused() -> None:
    text = json.dumps({"DeviceConfiguration": {"pad": "x" * MAX_TEMPLATE_CHARS}})
    with pytest.raises(TemplateError) as err:
        Template.from_json("big", text)
    assert "10240" in err.value.message


def test_template_body_that_is_not_json_is_refused() -> None:
    with pytest.raises(TemplateError):
        Template.from_json("bad", "{not json")


def test_store_reports_an_unknown_template_as_404(tmp_path: Path) -> None:
    store = TemplateStore(tmp_path)
    with pytest.raises(TemplateError) as err:
        store.get("Missing")
    assert err.value.status_code == 404
    assert err.value.error_code == "ResourceNotFound"


def test_store_refuses_an_invalid_template_name(tmp_path: Path) -> None:
    with pytest.raises(TemplateError) as err:
        TemplateStore(tmp_path).get("bad/name")
    assert err.value.status_code == 400


def test_store_returns_what_was_put_and_sees_later_edits(tmp_path: Path) -> None:
    store = TemplateStore(tmp_path)
    store.put("T1", {"DeviceConfiguration": {"v": "1"}})
    assert store.get("T1").evaluate({}, CERT_ID).device_configuration == {"v": "1"}
    store.put("T1", {"DeviceConfiguration": {"v": "22"}})
    assert store.get("T1").evaluate({}, CERT_ID).device_configuration == {"v": "22"}
    assert store.names() == ["T1"]


def test_demo_template_provisions_a_named_thing_with_a_looked_up_configuration() -> None:
    t = Template.from_json(DEMO_TEMPLATE_NAME, demo_template_text())
    plan = t.evaluate({"SerialNumber": "00ff"}, CERT_ID)
    assert plan.thing is not None and plan.thing.name == "fleetprov-00ff"
    assert plan.thing.attributes["serial"] == "00ff"
    assert plan.device_configuration["TelemetryInterval"] == "10"
    field = t.evaluate({"SerialNumber": "1", "Location": "field"}, CERT_ID)
    assert field.device_configuration["TelemetryInterval"] == "300"
    assert plan.certificate_status == "ACTIVE"
    assert plan.policies == [PolicySpec("FleetprovThingPolicy", None)]  # named: up and awssetup make it


def test_rotation_template_puts_the_certificate_on_the_named_thing_and_changes_nothing_else() -> None:
    t = Template.from_json(ROTATION_TEMPLATE_NAME, builtin_template_text(ROTATION_TEMPLATE_NAME))
    plan = t.evaluate({"ThingName": "fleetprov-00ff"}, CERT_ID)
    assert plan.thing is not None and plan.thing.name == "fleetprov-00ff"
    assert plan.thing.attributes == {} and plan.thing.groups == [] and plan.thing.thing_type is None
    assert set(plan.thing.overrides.values()) == {"DO_NOTHING"}  # an existing thing keeps what it has
    assert plan.certificate_status == "ACTIVE"
    assert plan.policies == [PolicySpec("FleetprovThingPolicy", None)]
    with pytest.raises(TemplateError, match="ThingName"):
        t.evaluate({}, CERT_ID)  # the device must say which thing


def test_name_patterns_refuse_a_trailing_newline() -> None:
    # Python's `$` also matches before a final "\n": AWS takes no such name, so neither may iotsim.
    from tools.iotsim import controlplane, policy, shapes, templates

    cases = [
        (templates.TEMPLATE_NAME, "FleetprovDemo"),
        (controlplane._CERT_ID, "a" * 64),
        (policy._ATTRIBUTE, "iot:Connection.Thing.Attributes[Mode]"),
    ]
    for pattern, good in cases:
        assert pattern.match(good), pattern.pattern
        assert not pattern.match(good + "\n"), pattern.pattern
    for shape, good in ((shapes.THING_NAME, "thing-1"), (shapes.THING_GROUP_NAME, "group-1"),
                        (shapes.POLICY_NAME, "policy-1"), (shapes.ATTRIBUTE_VALUE, "v")):
        assert shapes.check(shape, good, "x") == good
        with pytest.raises(shapes.ShapeError, match="regular expression pattern"):
            shapes.check(shape, good + "\n", "x")
