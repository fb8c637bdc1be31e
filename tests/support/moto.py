"""moto in server mode on loopback, for the SQS and SNS usage-event sinks.

``moto_server`` starts one ``ThreadedMotoServer`` on 127.0.0.1 (ephemeral port) for the session, with dummy AWS
credentials in the environment so botocore's standard credential chain finds them (and nothing on this machine).
``moto_down_port`` gives a port where no server listens yet, for "the sink is down, then up" tests: start a second
server on it with ``start_moto(port)`` when the test wants the sink to come back.

Load with ``pytest_plugins = ["tests.support.moto"]`` (tests/events/conftest.py does).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import botocore.session
import pytest
from moto.server import ThreadedMotoServer

from tests.support.gateway import free_port

REGION = "us-east-1"
ACCOUNT = "123456789012"  # moto's default account


@dataclass
class Moto:
    server: ThreadedMotoServer
    endpoint_url: str

    def client(self, service: str) -> Any:
        return botocore.session.get_session().create_client(service, region_name=REGION, endpoint_url=self.endpoint_url)

    def queue(self, *, fifo: bool = False) -> str:
        """A new, empty queue (unique name); returns its URL."""
        name = f"q-{uuid.uuid4().hex[:12]}" + (".fifo" if fifo else "")
        attrs = {"FifoQueue": "true"} if fifo else {}
        url: str = self.client("sqs").create_queue(QueueName=name, Attributes=attrs)["QueueUrl"]
        return url

    def topic_with_queue(self) -> tuple[str, str]:
        """A new SNS topic with a new SQS queue subscribed (raw delivery); returns (topic ARN, queue URL)."""
        sns, sqs = self.client("sns"), self.client("sqs")
        arn: str = sns.create_topic(Name=f"t-{uuid.uuid4().hex[:12]}")["TopicArn"]
        url = self.queue()
        queue_arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        sns.subscribe(TopicArn=arn, Protocol="sqs", Endpoint=queue_arn, Attributes={"RawMessageDelivery": "true"})
        return arn, url


def start_moto(port: int = 0) -> Moto:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    host, bound = server.get_host_and_port()
    return Moto(server, f"http://{host}:{bound}")


@pytest.fixture(scope="session")
def aws_credentials() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AWS_ACCESS_KEY_ID", "testing")
        mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        mp.setenv("AWS_DEFAULT_REGION", REGION)
        for var in ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
            mp.delenv(var, raising=False)
        mp.setenv("AWS_CONFIG_FILE", "/nonexistent/aigw-test-aws-config")
        mp.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/aigw-test-aws-credentials")
        mp.setenv("AWS_EC2_METADATA_DISABLED", "true")  # never probe an instance metadata service
        yield


@pytest.fixture(scope="session")
def moto_server(aws_credentials: None) -> Iterator[Moto]:
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one access-log line per call otherwise
    moto = start_moto()
    try:
        yield moto
    finally:
        moto.server.stop()


@pytest.fixture
def moto_down_port() -> int:
    return free_port()
