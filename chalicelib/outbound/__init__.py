"""Outbound: every request the app makes on a user's behalf. The SSRF-safe fetcher (pages on an
event loop, webhooks on the caller's thread), its address policy and shared rules, page summaries
for the prompt, and signed webhooks."""

from chalicelib.outbound.addresses import (  # noqa: F401
    METADATA_ADDRESSES,
    PUBLIC_PORTS,
    AddressPolicy,
    IPAddress,
    IPNetwork,
    address_problem,
    embedded_ipv4,
    parse_networks,
)
from chalicelib.outbound.fetcher import Fetcher, HostSlots  # noqa: F401
from chalicelib.outbound.rules import (  # noqa: F401
    BLOCKED,
    DEFAULT_PORTS,
    DEFAULT_TIMEOUT_S,
    ERROR,
    FETCHED,
    HOST_CONCURRENCY,
    HTML_TYPES,
    MAX_BYTES,
    MAX_REDIRECTS,
    NOT_HTML,
    PAGE_ACCEPT,
    REDIRECT_CODES,
    ROBOTS,
    ROBOTS_CACHE_SIZE,
    ROBOTS_MAX_BYTES,
    ROBOTS_TTL_S,
    STATUSES,
    TIMEOUT,
    USER_AGENT,
    Deadline,
    FetchResult,
    Hop,
    HostFailures,
    Resolver,
)
