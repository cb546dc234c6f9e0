"""The test suite: unit tests need no server; integration tests get real Kafka and Redis."""
