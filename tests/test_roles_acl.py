"""Stakeholder roles through a real Mosquitto (docs/roles.md): the ACL that
``edgegov fleet acl`` renders from a users file, probed for every role, every topic kind
and both sites, by publishing as each user and by subscribing as each user.

A publish is judged twice: by its PUBACK (MQTT v5 §3.4.2.1: 0x87 Not authorized for a
denied QoS 1 message) and by whether an all-reading observer received it. A subscription
is judged by what arrives, retained and live, on an over-broad ``edgegov/#``. "Nothing
else arrived" is read after a sentinel published last: the broker forwards a client's
messages in order (MQTT v5 §4.6), and a probe's message was queued before its PUBACK.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from agent.cli import main
from agent.fleet.roles import KINDS, ROLES, load_users, render_acl, role_template
from agent.tools.broker import MosquittoBroker, find_mosquitto
from agent.transport.mqtt import BrokerURL, Message, MqttClient, ReasonCode
from tests.conftest import ROOT

BROKER_DIR = ROOT / "configs" / "broker"
SITES = ("site-a", "site-b")
USERS_YAML = """\
users:
  gw-1: {role: device, sites: [site-a]}
  gw-2: {role: device, sites: [site-a]}
  op-a: {role: operator, sites: [site-a]}
  fm-a: {role: fleet-manager, sites: [site-a]}
  aud-a: {role: auditor, sites: [site-a]}
  aud-all: {role: auditor, sites: all}
  reg-a: {role: regulator, sites: [site-a]}
  cust-a: {role: customer, sites: [site-a]}
  cust-b: {role: customer, sites: [site-b]}
  coll: {role: collector, sites: all}
"""
USERS = {
    "gw-1": ("device", ["site-a"]),
    "gw-2": ("device", ["site-a"]),
    "op-a": ("operator", ["site-a"]),
    "fm-a": ("fleet-manager", ["site-a"]),
    "aud-a": ("auditor", ["site-a"]),
    "aud-all": ("auditor", SITES),
    "reg-a": ("regulator", ["site-a"]),
    "cust-a": ("customer", ["site-a"]),
    "cust-b": ("customer", ["site-b"]),
    "coll": ("collector", SITES),
}
ADMIN = "admin"  # test-only: reads and writes everything, observes and feeds the probes
SENTINEL = "probe/done"  # outside the edgegov tree; every probe may read it (test-only)
NOT_AUTHORIZED = 0x87
_PER_DEVICE_LEVELS = {
    "attestation": "attestation",
    "status": "status",
    "alert": "alert",
    "config_ack": "config/ack",
    "explanation": "explanation",
    "calibration": "calibration",
}
# Every user's name as a device level, too: a pattern line (%u) would let anyone write there.
DEVICES = (*USERS, "gw-9")
TOPICS = tuple(
    [
        f"edgegov/{s}/{d}/{lvl}"
        for s in SITES
        for d in DEVICES
        for lvl in _PER_DEVICE_LEVELS.values()
    ]
    + [f"edgegov/{s}/tuf/metadata/1.root.json" for s in SITES]
)
TIMEOUT = 10.0


def test_the_probe_covers_every_role_and_topic_kind():
    assert {role for role, _ in USERS.values()} == set(ROLES)
    assert set(_PER_DEVICE_LEVELS) | {"tuf"} == set(KINDS)


def _kind(topic: str) -> tuple[str, str, str | None]:
    """(site, kind, device) of a probe topic."""
    _, site, rest = topic.split("/", 2)
    if rest.startswith("tuf/"):
        return site, "tuf", None
    device, level = rest.split("/", 1)
    return site, {v: k for k, v in _PER_DEVICE_LEVELS.items()}[level], device


def may(user: str, access: str, topic: str) -> bool:
    """What the role definitions promise, from their data (not from the rendered ACL)."""
    role_name, sites = USERS[user]
    role = ROLES[role_name]
    site, kind, device = _kind(topic)
    kinds = role.reads if access == "read" else role.writes
    if kind not in kinds or site not in sites:
        return False
    return not (role.own_device and kind != "tuf" and device != user)


# -- a real broker with the rendered ACL ------------------------------------------------


class Probe:
    """One MQTT v5 connection as one user, recording PUBACKs, SUBACKs and messages."""

    def __init__(self, port: int, user: str, client_id: str) -> None:
        self.user = user
        self._cond = threading.Condition()
        self.acks: dict[int, int] = {}
        self.subacks: dict[int, list[int]] = {}
        self.messages: list[Message] = []
        url = BrokerURL.parse(f"mqtt://{user}:pw-{user}@127.0.0.1:{port}")
        self.client = MqttClient(url, client_id, max_inflight=100)
        self.client.on_publish = self._acked
        self.client.on_subscribe = self._subacked
        self.client.on_message = self._message
        self.client.connect(TIMEOUT)

    def _acked(self, mid: int, rc: ReasonCode) -> None:
        with self._cond:
            self.acks[mid] = rc.value
            self._cond.notify_all()

    def _subacked(self, mid: int, codes: list[ReasonCode]) -> None:
        with self._cond:
            self.subacks[mid] = [c.value for c in codes]
            self._cond.notify_all()

    def _message(self, msg: Message) -> None:
        with self._cond:
            self.messages.append(msg)
            self._cond.notify_all()

    def wait(self, ready: Callable[[], bool], what: str) -> None:
        with self._cond:
            assert self._cond.wait_for(ready, TIMEOUT), f"{self.user}: no {what}"

    def publish_all(self, payloads: dict[str, bytes], retain: bool = False) -> dict[str, int]:
        """Publish each (QoS 1) and wait for every PUBACK: topic -> reason code."""
        mids = {self.client.publish(t, p, retain=retain): t for t, p in payloads.items()}
        self.wait(lambda: all(m in self.acks for m in mids), "PUBACK for each")
        return {t: self.acks[m] for m, t in mids.items()}

    def subscribe(self, topic_filter: str) -> list[int]:
        """SUBSCRIBE (QoS 1) and wait for the SUBACK: its reason codes."""
        mid = self.client.subscribe(topic_filter)
        self.wait(lambda: mid in self.subacks, f"SUBACK for {topic_filter}")
        return self.subacks[mid]

    def received_until(self, sentinel: bytes) -> list[Message]:
        """Messages before ``sentinel`` arrived on SENTINEL (which it waits for)."""

        def is_sentinel(m: Message) -> bool:
            return m.topic == SENTINEL and m.payload == sentinel

        self.wait(lambda: any(map(is_sentinel, self.messages)), f"sentinel {sentinel!r}")
        with self._cond:
            msgs = list(self.messages)
        return msgs[: next(i for i, m in enumerate(msgs) if is_sentinel(m))]

    def close(self) -> None:
        self.client.close(timeout=2)


@dataclass
class Results:
    puback: dict[str, dict[str, int]]  # user -> topic -> PUBACK reason code
    delivered: dict[str, set[str]]  # user -> topics its publishes reached the observer on
    retained: dict[str, set[str]]  # user -> topics it got a retained message on
    live: dict[str, set[str]]  # user -> topics it got a live message on
    suback: dict[str, list[int]]  # user -> SUBACK reason codes for edgegov/#


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Results]:
    if find_mosquitto() is None:
        pytest.fail("mosquitto is not installed; run 'make test', which installs it")
    passwd = shutil.which("mosquitto_passwd")
    if passwd is None:
        pytest.fail("mosquitto_passwd is missing (it comes with Debian's mosquitto package)")
    tmp = tmp_path_factory.mktemp("roles")
    users_file = tmp / "users.yaml"
    users_file.write_text(USERS_YAML)
    acl = tmp / "edgegov.acl"
    assert main(["fleet", "acl", str(users_file), "--out", str(acl)]) == 0
    with acl.open("a") as f:  # the test's observer and its sentinel, outside edgegov/
        f.write(f"\nuser {ADMIN}\ntopic readwrite edgegov/#\ntopic readwrite probe/#\n")
        f.write(f"pattern read {SENTINEL}\n")
    pwfile = tmp / "passwd"
    pwfile.touch(mode=0o600)
    for user in (*USERS, ADMIN):
        subprocess.run([passwd, "-b", str(pwfile), user, f"pw-{user}"], check=True)
    config = f"allow_anonymous false\npassword_file {pwfile}\nacl_file {acl}\n"
    with MosquittoBroker(tmp / "broker", extra_config=config) as broker:
        probes = {u: Probe(broker.port, u, f"probe-{u}") for u in USERS}
        feeder = Probe(broker.port, ADMIN, "feeder")
        observer = Probe(broker.port, ADMIN, "observer")
        try:
            # (a) each user publishes on every topic; the observer sees what got through
            observer.subscribe("edgegov/#")
            observer.subscribe(SENTINEL)
            puback = {
                u: p.publish_all({t: f"{u}|{t}".encode() for t in TOPICS})
                for u, p in probes.items()
            }
            feeder.publish_all({SENTINEL: b"published"})
            delivered: dict[str, set[str]] = {u: set() for u in USERS}
            for m in observer.received_until(b"published"):
                user, _, topic = m.payload.decode().partition("|")
                assert topic == m.topic
                delivered[user].add(topic)
            # (b) each user subscribes to everything: retained messages, then live ones
            assert set(feeder.publish_all({t: b"retained" for t in TOPICS}, True).values()) == {0}
            feeder.publish_all({SENTINEL: b"retained"}, retain=True)
            retained, suback = {}, {}
            for u, p in probes.items():
                suback[u] = p.subscribe("edgegov/#")
                p.subscribe(SENTINEL)  # its retained sentinel comes after edgegov/#'s
                msgs = p.received_until(b"retained")
                assert all(m.retain for m in msgs), u
                retained[u] = {m.topic for m in msgs}
            assert set(feeder.publish_all({t: b"live" for t in TOPICS}).values()) == {0}
            feeder.publish_all({SENTINEL: b"live"})
            live = {}
            for u, p in probes.items():
                msgs = p.received_until(b"live")
                live[u] = {m.topic for m in msgs if m.payload == b"live"}
            yield Results(puback, delivered, retained, live, suback)
        finally:
            for p in (*probes.values(), feeder, observer):
                p.close()


# -- the matrix, from the role definitions ------------------------------------------------


@pytest.mark.parametrize("user", USERS)
def test_a_publish_gets_through_exactly_where_the_role_may_write(results, user):
    wrong = {
        t: rc
        for t, rc in results.puback[user].items()
        if rc != (0 if may(user, "write", t) else NOT_AUTHORIZED)
    }
    assert not wrong, f"{user} ({USERS[user][0]}): unexpected PUBACK codes {wrong}"
    expected = {t for t in TOPICS if may(user, "write", t)}
    assert results.delivered[user] == expected, (
        f"{user}: delivered but denied {sorted(results.delivered[user] - expected)}; "
        f"allowed but lost {sorted(expected - results.delivered[user])}"
    )


@pytest.mark.parametrize("user", USERS)
def test_a_subscription_receives_exactly_what_the_role_may_read(results, user):
    expected = {t for t in TOPICS if may(user, "read", t)}
    assert expected, f"{user} may read nothing: the probe would prove nothing"
    for how, got in (("retained", results.retained[user]), ("live", results.live[user])):
        assert got == expected, (
            f"{user} ({USERS[user][0]}), {how}: got but may not read "
            f"{sorted(got - expected)}; may read but did not get {sorted(expected - got)}"
        )


# -- a few promises spelled out, independent of the role definitions -----------------------


def test_read_only_roles_write_nothing_anywhere(results):
    for user in ("reg-a", "cust-a", "cust-b", "aud-a", "aud-all", "coll"):
        assert set(results.puback[user].values()) == {NOT_AUTHORIZED}, user
        assert results.delivered[user] == set(), user
    # not even under its own name as a device level (what a %u pattern line would allow)
    assert results.puback["reg-a"]["edgegov/site-a/reg-a/attestation"] == NOT_AUTHORIZED


def test_a_customer_sees_its_own_site_and_nothing_of_another(results):
    for got in (results.retained, results.live):
        assert "edgegov/site-a/gw-1/attestation" in got["cust-a"]
        assert "edgegov/site-a/gw-1/status" in got["cust-a"]
        assert not [t for t in got["cust-a"] if "/site-b/" in t]
        assert "edgegov/site-b/gw-1/attestation" in got["cust-b"]
        assert not [t for t in got["cust-b"] if "/site-a/" in t]
        # verdicts and statements, not operations: no alerts, acks or fleet configuration
        assert not [t for t in got["cust-a"] if t.endswith(("/alert", "/config/ack", ".json"))]


def test_a_regulator_reads_signed_statements_only(results):
    assert results.live["reg-a"] == {
        f"edgegov/site-a/{d}/{kind}"
        for d in DEVICES
        for kind in ("attestation", "explanation", "calibration")
    }


def test_a_device_writes_only_its_own_topics_in_its_own_site(results):
    rc = results.puback["gw-1"]
    assert rc["edgegov/site-a/gw-1/attestation"] == 0
    assert rc["edgegov/site-a/gw-1/config/ack"] == 0
    assert rc["edgegov/site-a/gw-2/attestation"] == NOT_AUTHORIZED
    assert rc["edgegov/site-b/gw-1/attestation"] == NOT_AUTHORIZED
    assert rc["edgegov/site-a/gw-1/explanation"] == NOT_AUTHORIZED
    assert "edgegov/site-a/gw-2/attestation" not in results.delivered["gw-1"]
    assert results.live["gw-1"] == {"edgegov/site-a/tuf/metadata/1.root.json"}


def test_only_the_fleet_manager_writes_tuf_and_only_for_its_fleet(results):
    writers = {
        (u, t)
        for u, codes in results.puback.items()
        for t, rc in codes.items()
        if "/tuf/" in t and rc == 0
    }
    assert writers == {("fm-a", "edgegov/site-a/tuf/metadata/1.root.json")}


def test_operators_write_explanations_and_calibration_of_their_site_only(results):
    assert results.delivered["op-a"] == {
        f"edgegov/site-a/{d}/{kind}" for d in DEVICES for kind in ("explanation", "calibration")
    }


def test_mosquitto_grants_every_subscription_and_checks_each_message(results):
    """What docs/roles.md says of Mosquitto 2.0: SUBACK grants QoS 1 to a customer and a
    device on edgegov/# alike; what arrives is filtered message by message (above)."""
    assert results.suback["cust-b"] == [1]
    assert results.suback["gw-1"] == [1]


def test_a_pattern_line_applies_to_every_user_which_is_why_the_rendered_acl_has_none(tmp_path):
    """configs/broker/edgegov.acl's device patterns let its read-only 'auditor' user write
    an attestation under its own name (the caution in that file and in docs/roles.md)."""
    passwd = shutil.which("mosquitto_passwd")
    assert passwd is not None and find_mosquitto() is not None
    pwfile = tmp_path / "passwd"
    pwfile.touch(mode=0o600)
    subprocess.run([passwd, "-b", str(pwfile), "auditor", "pw-auditor"], check=True)
    acl = BROKER_DIR / "edgegov.acl"
    config = f"allow_anonymous false\npassword_file {pwfile}\nacl_file {acl}\n"
    with MosquittoBroker(tmp_path / "broker", extra_config=config) as broker:
        auditor = Probe(broker.port, "auditor", "legacy-auditor")
        try:
            auditor.subscribe("edgegov/+/+/attestation")
            codes = auditor.publish_all(
                {"edgegov/f/auditor/attestation": b"x", "edgegov/f/gw-1/attestation": b"y"}
            )
            assert codes == {
                "edgegov/f/auditor/attestation": 0,
                "edgegov/f/gw-1/attestation": NOT_AUTHORIZED,
            }
            auditor.wait(lambda: bool(auditor.messages), "its own forged attestation")
            assert [m.topic for m in auditor.messages] == ["edgegov/f/auditor/attestation"]
        finally:
            auditor.close()


# -- the files in configs/broker and the users file's errors ---------------------------------


def test_the_checked_in_templates_and_example_are_what_the_command_renders():
    hint = (
        "render again: edgegov fleet acl configs/broker/edgegov-users.yaml "
        "--out configs/broker/edgegov-roles.acl --templates configs/broker/roles"
    )
    example = render_acl(load_users(BROKER_DIR / "edgegov-users.yaml"))
    assert (BROKER_DIR / "edgegov-roles.acl").read_text() == example, hint
    assert not [line for line in example.splitlines() if line.startswith("pattern")]
    assert sorted(p.stem for p in (BROKER_DIR / "roles").glob("*.acl")) == sorted(ROLES)
    for name in ROLES:
        assert (BROKER_DIR / "roles" / f"{name}.acl").read_text() == role_template(name), hint


def test_a_template_filled_in_is_the_rendered_block():
    users = load_users(BROKER_DIR / "edgegov-users.yaml")
    rendered = render_acl(users)
    for user in users.users:
        if user.sites is None or len(user.sites) != 1:
            continue
        filled = role_template(user.role.name)
        filled = filled.replace("{user}", user.name).replace("{prefix}", users.prefix)
        block = filled.replace("{site}", user.sites[0]).splitlines()
        assert "\n".join(line for line in block if not line.startswith("#")) in rendered


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("users: {bob: {role: boss, sites: [a]}}", ":1:21: users.bob.role: unknown role 'boss'"),
        ("users: {bob: {role: customer, sites: [a/b]}}", "users.bob.sites[0]: site 'a/b' is one"),
        ("users: {bob: {role: customer, sites: ['s+']}}", "users.bob.sites[0]: site 's+' is one"),
        ("users: {bob: {role: customer, sites: ['#']}}", "no '+', '#', '/' or NUL"),
        ("users: {bob: {role: regulator}}", "users.bob.sites: a regulator needs its sites"),
        ("users: {bob: {role: customer, sites: all}}", "users.bob.sites: 'all' is only for"),
        ("users: {bob: {role: customer, sites: []}}", "users.bob.sites: must not be empty"),
        (
            "users:\n  bob: {role: customer, sites: [a]}\n  bob: {role: auditor, sites: all}\n",
            ":3:3: users.bob: user 'bob' is listed twice",
        ),
        ("users: {gw: {role: device, sites: [a, b]}}", "users.gw.sites: a device belongs to"),
        ("users: {tuf: {role: device, sites: [a]}}", "users.tuf: 'tuf' cannot be a device id"),
        ("users: {bob: {role: customer, sites: [a], x: 1}}", "users.bob.x: unknown key"),
        ("users: {}", "users: expected a non-empty mapping"),
        ("users: [", "not valid YAML"),
    ],
)
def test_a_bad_users_file_is_refused_naming_file_and_field(tmp_path, capsys, body, message):
    f = tmp_path / "users.yaml"
    f.write_text(body + "\n")
    out = tmp_path / "edgegov.acl"
    assert main(["fleet", "acl", str(f), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"edgegov: error: {f}:"), err
    assert message in err, err
    assert not out.exists()


def test_without_out_the_acl_goes_to_standard_output(tmp_path, capsys):
    f = tmp_path / "users.yaml"
    f.write_text("topic_prefix: plant\nusers: {acme: {role: customer, sites: [s1, s2]}}\n")
    assert main(["fleet", "acl", str(f)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [x for x in lines if not x.startswith("#") and x] == [
        "user acme",
        "topic read plant/s1/+/attestation",
        "topic read plant/s1/+/status",
        "topic read plant/s1/+/explanation",
        "topic read plant/s1/+/calibration",
        "topic read plant/s2/+/attestation",
        "topic read plant/s2/+/status",
        "topic read plant/s2/+/explanation",
        "topic read plant/s2/+/calibration",
    ]
