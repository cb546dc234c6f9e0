"""What the tests share: servers, in-process roles, load, polling and oracles."""
