"""Tests that the deployment files agree with the code."""
