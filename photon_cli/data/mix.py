"""The sampling mix: how many training tokens each corpus source contributes."""

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class MixNode:
    """A group or source in the sampling mix.

    Siblings either all set weight (shares relative to each other) or all leave it
    None (shares proportional to their natural token counts). max_share caps a
    node at that fraction of all training tokens, and max_repeat caps it at that
    multiple of its natural token count. Tokens a capped node cannot take go to
    its uncapped siblings. A leaf's name is a source name.
    """

    name: str
    children: tuple["MixNode", ...] = ()
    weight: float | None = None
    max_share: float | None = None
    max_repeat: float | None = None

    def leaves(self) -> list[str]:
        if not self.children:
            return [self.name]
        return [leaf for child in self.children for leaf in child.leaves()]


# Default mix with no copyleft data. Prose gets 40 %, with both Bibles together
# at most 12 % and the KJV at most 5 %. Technical manuals get 45 % and WordNet
# glosses 10 %. Licence texts get at most 5 % and at most three passes, because
# the trained-on licences total only about 33k tokens.
MIX = MixNode("all", children=(
    MixNode("prose", weight=0.40, children=(
        MixNode("austen"),
        MixNode("sotu"),
        MixNode("jargon_file"),
        MixNode("devils_dictionary"),
        MixNode("bibles", max_share=0.12, children=(
            MixNode("modern_bible"),
            MixNode("kjv", max_share=0.05),
        )),
    )),
    MixNode("technical", weight=0.45, children=(
        MixNode("python_docs"),
        MixNode("sqlite_docs"),
        MixNode("postgresql_docs"),
        MixNode("vim_docs"),
    )),
    MixNode("definitions", weight=0.10, children=(MixNode("wordnet"),)),
    MixNode("legal", weight=0.05, max_repeat=3.0, children=(MixNode("licences"),)),
))


def _water_fill(target: float, shares: dict[str, float], caps: dict[str, float]) -> dict[str, float]:
    """Split target in proportion to shares; a share above its cap is fixed at the cap and
    the rest is split again among the others."""
    allocation = {name: 0.0 for name in shares}
    free = {name for name, share in shares.items() if share > 0 and caps[name] > 0}
    remaining = target
    while free and remaining > 0:
        total_share = sum(shares[name] for name in free)
        tentative = {name: remaining * shares[name] / total_share for name in free}
        over_cap = [name for name in free if tentative[name] > caps[name]]
        if not over_cap:
            allocation.update(tentative)
            break
        for name in over_cap:
            allocation[name] = caps[name]
            remaining -= caps[name]
            free.remove(name)
    return allocation


def allocate_tokens(mix: MixNode, natural_tokens: dict[str, int], total_tokens: float) -> dict[str, float]:
    """Return the number of training tokens to sample from each source of the mix.

    natural_tokens is each source's token count in the training documents.
    The result can sum to less than total_tokens when every node is capped.
    """

    def natural(node: MixNode) -> int:
        return sum(natural_tokens.get(leaf, 0) for leaf in node.leaves())

    def allocate(node: MixNode, target: float) -> dict[str, float]:
        if not node.children:
            return {node.name: target}
        weighted = [child.weight is not None for child in node.children]
        if any(weighted) and not all(weighted):
            raise ValueError(f"mix node {node.name!r} mixes weighted and unweighted children")
        shares = {child.name: child.weight if all(weighted) else natural(child) for child in node.children}
        caps = {}
        for child in node.children:
            cap = float("inf") if natural(child) > 0 else 0.0
            if child.max_share is not None:
                cap = min(cap, child.max_share * total_tokens)
            if child.max_repeat is not None:
                cap = min(cap, child.max_repeat * natural(child))
            caps[child.name] = cap
        child_targets = _water_fill(target, shares, caps)
        result = {}
        for child in node.children:
            result.update(allocate(child, child_targets[child.name]))
        return result

    return allocate(mix, float(total_tokens))


def group_of(source: str, mix: MixNode = MIX) -> str:
    """Return the name of the top-level mix group that contains a source."""
    for group in mix.children:
        if source in group.leaves():
            return group.name
    raise KeyError(f"source {source!r} is in no group of the mix")


def sample_documents(lengths: list[int], target_tokens: float, rng: np.random.Generator) -> list[int]:
    """Return document indices, with repeats, whose lengths sum to about target_tokens.

    Every document appears floor(target / total) times. The remainder is filled
    by documents in random order, each taken if the sum stays within the target,
    so a source never exceeds its cap. A source of a few long documents can fall
    short by up to one document.
    """
    total = sum(lengths)
    if total == 0 or target_tokens <= 0:
        return []
    full_passes = int(target_tokens // total)
    indices = list(range(len(lengths))) * full_passes
    remainder = target_tokens - full_passes * total
    taken_tokens = 0
    for i in rng.permutation(len(lengths)):
        if taken_tokens + lengths[i] <= remainder:
            indices.append(int(i))
            taken_tokens += lengths[i]
    return indices


def mix_constraints(source: str, mix: MixNode = MIX) -> dict:
    """Return the caps on a source and on the groups above it, as fractions of all training tokens."""
    constraints = {}

    def visit(node: MixNode) -> bool:
        if node.name == source:
            found = True
        else:
            found = any(visit(child) for child in node.children)
        if found and node is not mix and (node.max_share is not None or node.max_repeat is not None):
            constraints[node.name] = {"max_share": node.max_share, "max_repeat": node.max_repeat}
        return found

    visit(mix)
    return constraints
