"""DeFT tree-attention kernels: pure torch + Triton (never imports sglang).

Installed as ``deft_sglang.kernels``.  Public contract: see ``README.md``.
"""
from .api import plan_tree_attention, tree_attention
from .merge import merge_attention_states
from .planner import PlannerConfig, TreeAttentionPlan
from .spec import token_tree_parents
from .static import StaticTreeAttention
from .reference import attention_with_lse, merge_states_reference, tree_attention_reference

__all__ = [
    "tree_attention", "plan_tree_attention", "TreeAttentionPlan", "PlannerConfig",
    "tree_attention_reference", "attention_with_lse", "merge_states_reference",
    "merge_attention_states", "StaticTreeAttention", "token_tree_parents",
]
