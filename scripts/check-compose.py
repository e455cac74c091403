#!/usr/bin/python3
"""Checks docker-compose.yml's content, so the production-like stack cannot rot silently.

Reads the normalized `docker-compose config` output (anchors and merges resolved) with
Debian's python3-yaml, which docker-compose itself depends on. Prints one line per check
and a closing 'N passed, M failed'; exits non-zero on any failure.
"""
import subprocess
import sys

import yaml

FILE = sys.argv[1] if len(sys.argv) > 1 else "docker-compose.yml"
normalized = subprocess.run(
    ["docker-compose", "-f", FILE, "--profile", "monitoring", "config"],
    check=True, capture_output=True, text=True,
).stdout
services = yaml.safe_load(normalized)["services"]
results = []


def check(what, ok):
    results.append(bool(ok))
    print(("ok:   " if ok else "FAIL: ") + what)


def env(service):
    return {k: str(v) for k, v in (services.get(service, {}).get("environment") or {}).items()}


def depends(service):
    return services.get(service, {}).get("depends_on") or {}


def published(service):
    return {str(p.get("published")) for p in services.get(service, {}).get("ports") or [] if isinstance(p, dict)} | {
        str(p).split(":")[0] for p in services.get(service, {}).get("ports") or [] if not isinstance(p, dict)}


brokers = [s for s in services if s.startswith("kafka-") and s != "kafka-topics" and s != "kafka-ui"]
expected = ["kafka-topics", "postgres", "migrate", "producer", "consumer", "kafka-ui", "prometheus", "grafana"]
check("3 Kafka brokers", len(brokers) == 3)
for name in expected:
    check(f"service {name} present", name in services)
for broker in brokers:
    e = env(broker)
    check(f"{broker} runs KRaft (broker,controller) without ZooKeeper",
          e.get("KAFKA_PROCESS_ROLES") == "broker,controller" and "KAFKA_ZOOKEEPER_CONNECT" not in e)
    check(f"{broker} default replication 3, min.insync.replicas 2",
          e.get("KAFKA_DEFAULT_REPLICATION_FACTOR") == "3" and e.get("KAFKA_MIN_INSYNC_REPLICAS") == "2")
    check(f"{broker} offsets topic replicated 3 times", e.get("KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR") == "3")
topics_job = " ".join(str(c) for c in (services.get("kafka-topics", {}).get("command") or []))
check("topic job creates orders-placed with 50 partitions, RF 3, min ISR 2",
      "--topic orders-placed" in topics_job and "--partitions 50" in topics_job
      and "--replication-factor 3" in topics_job and "min.insync.replicas=2" in topics_job)
check("topic job creates orders-dlq", "--topic orders-dlq" in topics_job)
check("topic job creates order-events, RF 3, min ISR 2",
      "--topic order-events --partitions 50 --replication-factor 3 --config min.insync.replicas=2"
      in " ".join(topics_job.replace("\\", " ").split()))
check("postgres is version 16 with a volume",
      str(services.get("postgres", {}).get("image", "")).startswith("postgres:16") and services.get("postgres", {}).get("volumes"))
check("migrate runs `migrate` after postgres is healthy",
      services.get("migrate", {}).get("command") == ["migrate"]
      and depends("migrate").get("postgres", {}).get("condition") == "service_healthy")
consumer = services.get("consumer", {})
check("consumer has no container_name (scalable)", "container_name" not in consumer)
check("consumer publishes no host port (scalable)", not consumer.get("ports"))
for name in ["producer", "consumer"]:
    d = depends(name)
    check(f"{name} waits for topics and migration",
          d.get("kafka-topics", {}).get("condition") == "service_completed_successfully"
          and d.get("migrate", {}).get("condition") == "service_completed_successfully")
    check(f"{name} gets KAFKA_BROKERS and DATABASE_URL", "KAFKA_BROKERS" in env(name) and "DATABASE_URL" in env(name))
check("producer on host port 8080", "8080" in published("producer"))
check("kafka-ui on host port 8090", "8090" in published("kafka-ui"))
for name in ["prometheus", "grafana"]:
    check(f"{name} is in the monitoring profile", services.get(name, {}).get("profiles") == ["monitoring"])
one_shot = {"kafka-topics", "migrate"}
for name, service in services.items():
    if name not in one_shot:
        hc = service.get("healthcheck") or {}
        check(f"{name} has a healthcheck", hc.get("test") and not hc.get("disable"))
check("consumer gets a stop grace period for its drain", consumer.get("stop_grace_period"))

passed, failed = results.count(True), results.count(False)
print(f"{passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
