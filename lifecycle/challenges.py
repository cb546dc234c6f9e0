"""Champion-challenger configs of aliases: start, stop and promote, and the stats keys.

While a challenge is active, `sv:{ALIAS}:challenge` holds it; clients that search the alias
shadow a share of their requests to the challenger and append each comparison to
`sv:{ALIAS}:challenge:log`. Those key names and the stored config are the query protocol's
(searcher/routing.py); this module does every write to them. Stopping or promoting moves the
config to `sv:{ALIAS}:challenge:last`, so it can still be reported.
"""

from __future__ import annotations

import math
import time
import uuid
from dataclasses import asdict

import redis

from ingest import audit, catalog
from ingest.names import CollectionName
from lifecycle import aliases
from lifecycle.errors import AliasConflict, AliasError, ChallengeNotFound
from searcher.routing import Challenge, challenge_key, last_key
from streamvec import redisconn

ROLES = ("champion", "challenger")

# KEYS: active config, last config. ARGV: the raw config the caller read. Ends the challenge
# only if it is still the one the caller saw.
_END = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[2], ARGV[1])
redis.call('DEL', KEYS[1])
return 1
"""


def end_keys(alias: str) -> list[str]:
    """The KEYS of the script that ends a challenge: the active and the last config."""
    name = aliases.check_name(alias)
    return [challenge_key(name), last_key(name)]


def stats_key(alias: str, challenge_id: str) -> str:
    """A challenge's evaluated totals: `sv:{ALIAS}:challenge:stats:<id>`."""
    return aliases.check_name(alias).key(f"challenge:stats:{challenge_id}")


def latency_key(alias: str, challenge_id: str, role: str) -> str:
    """Latency samples (ms) of one role: `sv:{ALIAS}:challenge:stats:<id>:ms:<role>`."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, got {role!r}")
    return aliases.check_name(alias).key(f"challenge:stats:{challenge_id}:ms:{role}")


def active(client: redis.Redis, alias: str) -> Challenge | None:
    """The alias's active challenge, or None."""
    raw = client.get(challenge_key(aliases.check_name(alias)))
    return None if raw is None else Challenge.from_json(raw)


def latest(client: redis.Redis, alias: str) -> tuple[Challenge, bool] | None:
    """The active challenge, else the last ended one, with True when it is active."""
    name = aliases.check_name(alias)
    now, last = client.mget([challenge_key(name), last_key(name)])
    if now is not None:
        return Challenge.from_json(now), True
    return None if last is None else (Challenge.from_json(last), False)


def start(client: redis.Redis, alias: str, challenger: str, share: float,
          actor: str) -> Challenge:
    """Start shadowing `share` of the alias's searches to `challenger`."""
    current = aliases.get(client, alias)
    challenger = str(CollectionName.parse(challenger))
    catalog.load_spec(client, challenger)  # raises CollectionNotFound with a clear message
    if not (isinstance(share, (int, float)) and math.isfinite(share) and 0 <= share <= 1):
        raise AliasError(f"share must be a fraction in [0, 1], got {share!r}")
    if challenger == current.target:
        raise AliasConflict(f"{challenger!r} is already the champion of alias {alias!r}")
    config = Challenge(uuid.uuid4().hex[:12], alias, current.target, challenger, float(share),
                       round(time.time(), 3), actor)
    if not client.set(challenge_key(alias), config.to_json(), nx=True):
        running = active(client, alias)
        what = f" ({running.id}: {running.challenger})" if running else ""
        raise AliasConflict(f"alias {alias!r} already has an active challenge{what}; stop it "
                         f"first with `streamvec challenge stop {alias}`")
    audit.record(client, "challenge.start", alias, asdict(config), actor)
    return config


def stop(client: redis.Redis, alias: str, actor: str) -> Challenge:
    """End the alias's active challenge without switching the alias."""
    config = _end(client, alias)
    audit.record(client, "challenge.stop", alias, {"id": config.id, "champion": config.champion,
                                                   "challenger": config.challenger}, actor)
    return config


def promote(client: redis.Redis, alias: str, actor: str) -> tuple[Challenge, str | None]:
    """Switch the alias to the challenger and end the challenge; return it and the old target."""
    config = active(client, alias)
    if config is None:
        raise ChallengeNotFound(f"alias {alias!r} has no active challenge to promote")
    catalog.load_spec(client, config.challenger)
    previous = aliases.switch(client, alias, config.challenger, actor, "promote")
    _end(client, alias)
    audit.record(client, "challenge.promote", alias, {
        "id": config.id, "champion": config.champion, "challenger": config.challenger,
        "previous": previous}, actor)
    return config, previous


def _end(client: redis.Redis, alias: str) -> Challenge:
    """Move the active config to `last` if nobody changed it meanwhile."""
    name = aliases.check_name(alias)
    for _ in range(aliases.SWITCH_ATTEMPTS):
        raw = client.get(challenge_key(name))
        if raw is None:
            raise ChallengeNotFound(f"alias {alias!r} has no active challenge")
        ended = redisconn.register_script(client, _END)(keys=end_keys(alias), args=[raw])
        if ended:
            return Challenge.from_json(raw)
    raise AliasConflict(f"the challenge of alias {alias!r} kept changing; try again")
