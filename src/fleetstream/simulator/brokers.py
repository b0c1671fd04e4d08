"""Simulator transports through a broker: MQTT (paho-mqtt 2) and Kafka (confluent-kafka).

Both send each device's messages of a batch as ONE broker message, a JSON array
(DESIGN §10: a QoS 1 round trip per reading is slow), and return from
:meth:`send` only once the broker acknowledged every one of them (a PUBACK for
MQTT, a successful delivery report with ``acks=all`` for Kafka). The client
libraries run their network I/O on a thread of their own; acknowledgements
resolve futures on the event loop with ``call_soon_threadsafe``, so the loop is
never blocked.

* MQTT: topic ``<prefix>/<device id>/telemetry`` (prefix ``devices``, which the
  server's default filter ``devices/+/telemetry`` matches), QoS 1.
* Kafka: topic ``device-events`` unless the URL names another, key = device id.

With ``?pack=N`` in the target URL, a broker message carries up to N readings of
several devices instead, as a gateway sends them: at 1 reading per device and
second, a message per device is a message per reading, and a fleet of 100,000
devices is then 100,000 publishes a second, more than one Python process can
make. Packed MQTT messages go to ``<prefix>/telemetry`` (no device level: the
server takes each id from the payload, so it subscribes with
``--mqtt-topic devices/telemetry`` or ``devices/#``); packed Kafka messages are
keyed ``pack/<bucket>``, a bucket being a fixed share of the devices (by a hash
of the id), so each device's readings still stay in one partition, in order.

Re-sending is safe: every message carries a ``msg_id``, which the server dedups.

The pieces live in modules of their own: targets, packing and the futures both
transports resolve in :mod:`~fleetstream.simulator.broker_common`, the transports in
:mod:`~fleetstream.simulator.broker_mqtt` and :mod:`~fleetstream.simulator.broker_kafka`.
This module gathers them under the name the simulator and its tests import.
"""

from __future__ import annotations

from fleetstream.simulator.broker_common import (
    MQTT_DEFAULT_PORT,
    MQTT_DEFAULT_PREFIX,
    PACK_BUCKETS,
    MqttTarget,
    bucket_of,
    by_device,
    packed,
    parse_kafka_target,
    parse_mqtt_target,
    target_from_env,
)
from fleetstream.simulator.broker_kafka import KafkaTransport
from fleetstream.simulator.broker_mqtt import MqttTransport

__all__ = [
    "MQTT_DEFAULT_PORT",
    "MQTT_DEFAULT_PREFIX",
    "PACK_BUCKETS",
    "KafkaTransport",
    "MqttTarget",
    "MqttTransport",
    "bucket_of",
    "by_device",
    "packed",
    "parse_kafka_target",
    "parse_mqtt_target",
    "target_from_env",
]
