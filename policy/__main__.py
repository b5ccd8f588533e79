"""The hastack policy pack: the rule set of hastack.policy, mandatory, for every preview and up.

    pulumi preview --policy-pack policy/

The rules live in the project (hastack/policy/), not here: this pack and
`hastack plan` enforce the same ones. hastack.policy.pack adapts pulumi-policy's
arguments to them.
"""

import sys
from pathlib import Path

# the project directory above this one: hastack (the rules, the topology model) and roles
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pulumi_policy import PolicyPack  # noqa: E402

from hastack.policy.pack import policy_pack_args  # noqa: E402

PolicyPack(**policy_pack_args())
