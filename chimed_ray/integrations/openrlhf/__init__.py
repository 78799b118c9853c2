"""OpenRLHF as the PPO engine (`engine: openrlhf`): our config translated into its command line,
our prompts and chat template handed over, the run submitted as a Ray job, its model brought back.

openrlhf itself is never imported here (it needs flash-attn and CUDA); the flag table is checked
against the pinned release's source by tests/openrlhf.
"""

from chimed_ray.integrations.openrlhf.flags import OPENRLHF_VERSION, Handover, Translation, translate
from chimed_ray.integrations.openrlhf.stage import run_openrlhf_ppo

__all__ = ["OPENRLHF_VERSION", "Handover", "Translation", "run_openrlhf_ppo", "translate"]
