"""saf_ref.attack: adversarial bit errors, chosen flips of the stored bits that hurt a network most.

It needs forward and backward passes, so it sits above :mod:`saf_ref.protect` and :mod:`saf_ref.nn`;
nothing below imports it.

- :mod:`~saf_ref.attack.problem`: the objective (untargeted or targeted), exact evaluation, gradients.
- :mod:`~saf_ref.attack.candidates`: the exact value of every candidate flip and its first-order estimate.
- :mod:`~saf_ref.attack.search`: :func:`bit_flip_attack` (progressive bit search, Rakin et al. ICCV 2019)
  and its :class:`AttackResult` (a replayable FaultList and the loss / accuracy trajectory).
"""

from saf_ref.attack.problem import AttackProblem, Evaluation
from saf_ref.attack.search import METHODS, AttackResult, AttackStep, bit_flip_attack

__all__ = ["METHODS", "AttackProblem", "AttackResult", "AttackStep", "Evaluation", "bit_flip_attack"]
