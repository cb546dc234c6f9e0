"""The suite's fixtures, registered as plugins so that no test module imports a fixture."""

pytest_plugins = ["tests.support.servers", "tests.support.standin"]
