"""Large images between processes over Fast DDS with config/fastdds_large_images.xml, and when it is used."""

from __future__ import annotations

import pytest
from ros_harness import DOMAIN_ID
from script_modules import load_script

from mafs_ros.ros.transport import (
    PROFILE_VARIABLES,
    TRANSPORT_VARIABLE,
    large_image_environment,
    large_image_profile_path,
    use_large_image_profile,
    user_transport_choice,
)

image_delivery = load_script("image_delivery")


def test_640x480_rgb8_at_10_hz_reaches_a_default_subscriber_when_the_publisher_uses_the_profile(monkeypatch):
    # As the README tells users: the profile on the camera driver's (publisher's) side; the subscriber is a
    # process with Fast DDS's defaults.
    monkeypatch.setenv("ROS_DOMAIN_ID", str(DOMAIN_ID + 2))
    received, sent = image_delivery.measure(640, 480, 10.0, 40, publisher="profile", subscriber="default")
    print(f"\n640x480 rgb8, 10 Hz, profile on the publisher: received {received} of {sent}")
    assert received >= 0.95 * sent


def test_profile_is_found_and_is_a_default_participant_profile():
    text = large_image_profile_path().read_text()
    assert 'is_default_profile="true"' in text and "<segment_size>" in text


def test_the_profile_is_used_unless_the_user_chose_transports(tmp_path):
    path = str(large_image_profile_path())
    # Only the variable the distribution's Fast DDS reads: Fast DDS 3 warns at every start about the other one.
    assert large_image_environment({}) == {PROFILE_VARIABLES[0]: path}  # Kilted and later (the PyPI wheels)
    assert large_image_environment({"ROS_DISTRO": "jazzy"}) == {PROFILE_VARIABLES[1]: path}
    for chosen in ({PROFILE_VARIABLES[0]: "/mine.xml"}, {PROFILE_VARIABLES[1]: "/mine.xml"},
                   {TRANSPORT_VARIABLE: "LARGE_DATA"}, {"RMW_IMPLEMENTATION": "rmw_cyclonedds_cpp"},
                   {"MAFS_FASTDDS_PROFILE": "off"}):
        assert large_image_environment(chosen) == {}, chosen
        assert "set by the user" in use_large_image_profile(dict(chosen))
    (tmp_path / "DEFAULT_FASTDDS_PROFILES.xml").write_text("<dds/>")
    assert "working directory" in user_transport_choice({}, cwd=tmp_path)
    environ: dict[str, str] = {"RMW_IMPLEMENTATION": "rmw_fastrtps_cpp"}
    assert path in use_large_image_profile(environ)
    assert environ[PROFILE_VARIABLES[0]] == path and PROFILE_VARIABLES[1] not in environ


@pytest.mark.parametrize("setting", ["elsewhere"])
def test_unknown_delivery_setting_is_a_clear_error(setting):
    with pytest.raises(ValueError, match="transport setting"):
        image_delivery.environment(setting)
