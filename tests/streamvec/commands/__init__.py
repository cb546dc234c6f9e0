"""Tests of the command line: parsing, exit statuses, role processes."""
