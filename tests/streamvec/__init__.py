"""Tests of the base modules: settings, health, files, the embedder, the dev stack."""
