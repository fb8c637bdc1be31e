"""Usage-event tests: moto (SQS, SNS) as a real server on loopback, a real webhook server, real databases."""

from tests.support.moto import aws_credentials, moto_down_port, moto_server

__all__ = ["aws_credentials", "moto_down_port", "moto_server"]
