"""Speculative-decoding token trees in the kernel contract (tree verification).

A draft token tree (Medusa / EAGLE) is verified in one forward: every draft token attends to the
committed prefix and to its ancestors inside the tree, itself included.  In the contract's terms
each draft token is a one-token node whose parent is its tree parent (the prefix for the tree's
root token), and each draft token is a query at its own node; the prefix is one shared node, read
once for all of them.  This module turns Medusa choice paths into that form.
"""
from __future__ import annotations

from typing import Sequence


def token_tree_parents(choices: Sequence[Sequence[int]]) -> tuple[list, list]:
    """Parents of a token tree given as Medusa choice paths.

    Token 0 is the tree's root (the token sampled last); every choice path ``c`` is one more
    token, the child ``c[-1]`` of the token at path ``c[:-1]`` (the root for a one-element path).

    Parameters
    ----------
    choices : the ``t - 1`` paths of a ``t``-token tree, e.g. ``[[0], [1], [0, 0]]``.

    Returns
    -------
    (paths, parent): the paths in an order where parents come first (by length, then value),
    with ``[]`` for the root at index 0; ``parent[i]`` is the index of token ``i``'s parent
    (-1 for the root).

    Raises
    ------
    ValueError
        A repeated path, or a path whose parent path is not in ``choices``.
    """
    paths = [()] + sorted((tuple(int(x) for x in c) for c in choices), key=lambda c: (len(c), c))
    index = {}
    for i, path in enumerate(paths):
        if path in index:
            raise ValueError(f"choices repeat the path {list(path)}")
        index[path] = i
    parent = [-1]
    for path in paths[1:]:
        if not path or path[:-1] not in index:
            raise ValueError(f"choices hold {list(path)} but not its parent {list(path[:-1])}")
        parent.append(index[path[:-1]])
    return [list(p) for p in paths], parent
