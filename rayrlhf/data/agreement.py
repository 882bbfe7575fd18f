"""Inter-annotator agreement: percent agreement, Cohen's kappa, Fleiss' kappa.

Pure functions of label lists (any hashable labels). A kappa is undefined when chance agreement
is 1 (every label the same category): the functions return ``nan`` then and
``kappa_undefined_reason`` says why, so that callers report it instead of dividing by zero.
"""
from __future__ import annotations

import math
from collections import Counter
from collections.abc import Hashable, Sequence


def percent_agreement(a: Sequence[Hashable], b: Sequence[Hashable]) -> float:
    """Share of items on which two annotators give the same label.

    p_o = (1/N) sum_i [a_i == b_i]. Returns nan for no items.

    Args:
        a, b: the two annotators' labels, item by item (same length).
    """
    _same_length(a, b)
    if not a:
        return math.nan
    return sum(x == y for x, y in zip(a, b)) / len(a)


def cohen_kappa(a: Sequence[Hashable], b: Sequence[Hashable]) -> float:
    """Cohen's kappa of two annotators (Cohen 1960, "A coefficient of agreement for nominal scales").

    kappa = (p_o - p_e) / (1 - p_e), with p_o the observed agreement and
    p_e = sum_k (n_ak / N) (n_bk / N) the agreement expected by chance from each annotator's
    own label frequencies. Returns nan when p_e == 1 (both annotators always give the same
    single label: agreement beyond chance is undefined) or when there are no items.

    Args:
        a, b: the two annotators' labels, item by item (same length).
    """
    _same_length(a, b)
    n = len(a)
    if n == 0:
        return math.nan
    p_o = percent_agreement(a, b)
    count_a, count_b = Counter(a), Counter(b)
    p_e = sum(count_a[k] * count_b[k] for k in count_a) / (n * n)
    if math.isclose(p_e, 1.0):
        return math.nan
    return (p_o - p_e) / (1.0 - p_e)


def fleiss_kappa(items: Sequence[Sequence[Hashable]]) -> float:
    """Fleiss' kappa of m >= 2 annotators who all labelled every item (Fleiss 1971,
    "Measuring nominal scale agreement among many raters").

    With n_ij the number of annotators who gave item i label j, N items and m annotators:

        P_i   = (sum_j n_ij^2 - m) / (m (m - 1))      agreement on item i
        P_bar = (1/N) sum_i P_i
        p_j   = (1/(N m)) sum_i n_ij                   share of label j
        P_e   = sum_j p_j^2
        kappa = (P_bar - P_e) / (1 - P_e)

    Returns nan when P_e == 1 (one label everywhere) or there are no items.

    Args:
        items: one sequence of m labels per item (the same m for every item).
    """
    if not items:
        return math.nan
    m = len(items[0])
    if m < 2:
        raise ValueError(f"Fleiss' kappa needs at least 2 labels per item, found {m}")
    totals: Counter = Counter()
    p_bar = 0.0
    for i, labels in enumerate(items):
        if len(labels) != m:
            raise ValueError(f"item {i} has {len(labels)} labels, item 0 has {m}; expected the same number")
        counts = Counter(labels)
        totals.update(counts)
        p_bar += (sum(c * c for c in counts.values()) - m) / (m * (m - 1))
    p_bar /= len(items)
    p_e = sum((c / (len(items) * m)) ** 2 for c in totals.values())
    if math.isclose(p_e, 1.0):
        return math.nan
    return (p_bar - p_e) / (1.0 - p_e)


def majority(labels: Sequence[Hashable]) -> Hashable | None:
    """The most frequent label, or None when two or more labels tie for most frequent."""
    if not labels:
        return None
    (top, n), *rest = Counter(labels).most_common()
    if rest and rest[0][1] == n:
        return None
    return top


def kappa_undefined_reason(labels: Sequence[Hashable]) -> str:
    """Why a kappa over ``labels`` (all annotators' labels pooled) is nan; "" if it is defined."""
    if not labels:
        return "no items"
    kinds = set(labels)
    if len(kinds) == 1:
        return f"undefined: every label is {next(iter(kinds))!r}, so chance agreement is 1"
    return ""


def _same_length(a: Sequence, b: Sequence) -> None:
    if len(a) != len(b):
        raise ValueError(f"expected two label lists of the same length, found {len(a)} and {len(b)}")
