"""farmhand: a render farm manager whose actor-model scheduling core runs unchanged over TCP and in SimPy.

The public API: parse job specs, choose policies, and host the core's behaviours.
"""

from farmhand.core.messages import RunRecord
from farmhand.core.policies import Policy, make_policy, policy_names, register_policy
from farmhand.core.spec import JobSpec, SpecError, parse_job

__all__ = [
    "JobSpec",
    "Policy",
    "RunRecord",
    "SpecError",
    "make_policy",
    "parse_job",
    "policy_names",
    "register_policy",
]
__version__ = "0.1.0"
