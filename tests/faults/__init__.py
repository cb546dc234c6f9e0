"""The fault-injection suite: the whole system under dependency outages and hostile input."""
