"""Preference losses: pure functions of sequence log-probs (`pairwise`, `listwise`) and their registry
(`registry`: which losses exist, what each needs, the ``loss.*`` options, the ``loss:`` config checks).

A layer of its own below config and training: it imports only torch and currydpo.errors.
"""

from .listwise import ListLogps, kendall_tau, lipo, list_metrics, plackett_luce, pro
from .pairwise import PairLogps, mrpo_reference
from .registry import (
    LOSSES,
    OPTIONS,
    LossSpec,
    Option,
    as_names,
    check_loss,
    check_options,
    check_section,
    combine,
    is_listwise,
    list_loss,
    needs_reference,
    pair_loss,
)

__all__ = ["LOSSES", "OPTIONS", "ListLogps", "LossSpec", "Option", "PairLogps", "as_names", "check_loss",
           "check_options", "check_section", "combine", "is_listwise", "kendall_tau", "lipo", "list_loss",
           "list_metrics", "mrpo_reference", "needs_reference", "pair_loss", "plackett_luce", "pro"]
