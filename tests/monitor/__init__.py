"""Tests of the monitor package: drift, windows, metrics, the service."""
