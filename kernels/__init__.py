"""DeFT tree-attention kernels: pure torch + Triton (never imports sglang).

Installed as ``deft_sglang.kernels``.  Public contract: see ``README.md``.
"""
from .api import plan_tree_attention, tree_attention
from .merge import merge_attention_states
from .planner import PlannerConfig, TreeAttentionPlan
from .spec import ancestor_mask, draft_tree_as_nodes, token_tree_parents
from .static import StaticTreeAttention
from .reference import (attention_with_lse, merge_states_reference, tree_attention_reference,
                        tree_verify_reference)
from .verify import TreeVerifyPlan, plan_tree_verify, tree_verify_attention

__all__ = [
    "tree_attention", "plan_tree_attention", "TreeAttentionPlan", "PlannerConfig",
    "tree_attention_reference", "attention_with_lse", "merge_states_reference",
    "merge_attention_states", "StaticTreeAttention", "token_tree_parents", "ancestor_mask",
    "draft_tree_as_nodes", "plan_tree_verify", "tree_verify_attention", "TreeVerifyPlan",
    "tree_verify_reference",
]
