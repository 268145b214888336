"""saf_ref.attack: adversarial bit errors, chosen flips of the stored bits that hurt a network most.

It needs forward and backward passes, so it sits above :mod:`saf_ref.protect` and :mod:`saf_ref.nn`;
nothing below imports it.

- :mod:`~saf_ref.attack.problem`: the objective (untargeted or targeted), exact evaluation, gradients.
- :mod:`~saf_ref.attack.candidates`: the exact value of every candidate flip and its first-order estimate.
- :mod:`~saf_ref.attack.search`: :func:`bit_flip_attack` (progressive bit search, Rakin et al. ICCV 2019)
  and ``"gradient"`` (:mod:`~saf_ref.attack.gradient`, one flipped bit per word), with their
  :class:`AttackResult` (a replayable FaultList and the loss / accuracy trajectory).
- :mod:`~saf_ref.attack.vulnerability`: :func:`vulnerability_map`, the damage of one flipped bit per
  exposed tensor and bit position, exact and first-order, with intervals.
- :mod:`~saf_ref.attack.advbet`: :class:`AdvBETConfig`, the attack adversarial bit-error training runs
  on every step (``saf_ref.train.RandBETConfig(adversarial=AdvBETConfig(k_train=...))``).
- :mod:`~saf_ref.attack.checks`: the argument checks shared by the entry points.
"""

from saf_ref.attack.advbet import AdvBETConfig
from saf_ref.attack.gradient import GradientRound
from saf_ref.attack.problem import AttackProblem, Evaluation
from saf_ref.attack.search import METHODS, AttackResult, AttackStep, bit_flip_attack
from saf_ref.attack.vulnerability import VULNERABILITY_FIELDS, FlipSample, VulnerabilityMap, vulnerability_map

__all__ = [
    "METHODS",
    "VULNERABILITY_FIELDS",
    "AdvBETConfig",
    "AttackProblem",
    "AttackResult",
    "AttackStep",
    "Evaluation",
    "FlipSample",
    "GradientRound",
    "VulnerabilityMap",
    "bit_flip_attack",
    "vulnerability_map",
]
