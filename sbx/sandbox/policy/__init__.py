"""Egress policy: allow rules, name normalisation and the address ranges a step never reaches.

STANDARD LIBRARY AND idna ONLY. This package is copied into the gateway image and
imported there, where pydantic and other third-party packages do not exist (every
module imports only the standard library, `idna` (Debian's python3-idna in the image)
and its siblings, relatively). The host side
(``sbx.pipelines.spec.step``) adds checks that need third-party data, such as the
public-suffix refusal for wildcards.

An allow entry is one of::

    host              host:port
    *.suffix          *.suffix:port
    1.2.3.4           1.2.3.4:443
    10.0.0.0/8        10.0.0.0/8:443
    2001:db8::1       [2001:db8::1]:443
    2001:db8::/32     [2001:db8::/32]:443

Names are case-folded, trailing dots removed and non-ASCII labels IDNA-encoded (UTS 46),
so a verdict never depends on how a name was spelled.

Modules: `names` (canonical host names, names never reachable), `addresses` (ranges never
reached, address matching), `rules` (one allow entry: parse, refuse, match), `model`
(`Policy`: mode, first-match rules, digest), `errors` (`PolicyError`), `actions` (HTTP
methods and path patterns of action-level rules, request-path normalization).
"""

from __future__ import annotations

from .actions import METHODS, Actions, AmbiguousPath, PathPattern, normalize_path
from .addresses import INTERNAL_NETWORKS, IPAddress, IPNetwork, in_networks, is_internal
from .errors import PolicyError
from .model import MODES, Policy
from .names import normalize_name
from .rules import Rule, parse_rule, with_actions

__all__ = [
    "INTERNAL_NETWORKS",
    "METHODS",
    "MODES",
    "Actions",
    "AmbiguousPath",
    "IPAddress",
    "IPNetwork",
    "PathPattern",
    "Policy",
    "PolicyError",
    "Rule",
    "in_networks",
    "is_internal",
    "normalize_name",
    "normalize_path",
    "parse_rule",
    "with_actions",
]
