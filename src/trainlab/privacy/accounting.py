"""Privacy accounting through Opacus's accountants (RDP and PRV): epsilon for a delta after
some steps of the subsampled Gaussian mechanism, and the noise for a target epsilon.

Opacus is an optional dependency (`pip install 'trainlab[dp]'`); trainlab adds no
accounting arithmetic of its own.
"""

import warnings

from ..errors import UserError

ACCOUNTANTS = ("rdp", "prv")


def _opacus():
    try:
        from opacus import accountants
        from opacus.accountants import utils
    except ImportError:
        raise UserError("privacy accounting needs Opacus's accountants: pip install 'trainlab[dp]'") from None
    # at the first steps the best RDP order lies beyond any grid; the bound stays valid, only loose
    warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
    return accountants, utils


def check(accountant: str, sample_rate: float, delta: float) -> None:
    if accountant not in ACCOUNTANTS:
        raise UserError(f"accountant: must be one of {', '.join(ACCOUNTANTS)}, got {accountant!r}")
    if not 0 < sample_rate <= 1:
        raise UserError(f"sample_rate: must be in (0, 1], got {sample_rate}")
    if not 0 < delta < 1:
        raise UserError(f"delta: must be in (0, 1), got {delta}")


def epsilon(noise_multiplier: float, sample_rate: float, steps: int, delta: float, accountant: str = "rdp") -> float:
    """Epsilon spent after `steps` steps with Poisson sampling rate `sample_rate`."""
    check(accountant, sample_rate, delta)
    if steps == 0:
        return 0.0
    if noise_multiplier <= 0:
        return float("inf")
    accountants, _ = _opacus()
    if accountant == "prv":
        acc = accountants.PRVAccountant()
        acc.history = [(noise_multiplier, sample_rate, steps)]
        return float(acc.get_epsilon(delta))
    acc = accountants.RDPAccountant()
    acc.history = [(noise_multiplier, sample_rate, steps)]
    # Opacus's default orders stop at 63; early in training (or with little noise) the best
    # order is higher, so the grid goes on to 4096 (the bound is the minimum over the grid)
    return float(acc.get_epsilon(delta, alphas=acc.DEFAULT_ALPHAS + [80, 100, 128, 192, 256, 512, 1024, 2048, 4096]))


def noise_for(target_epsilon: float, sample_rate: float, steps: int, delta: float, accountant: str = "rdp") -> float:
    """The smallest noise multiplier whose epsilon after `steps` steps is at most the target."""
    check(accountant, sample_rate, delta)
    if target_epsilon <= 0:
        raise UserError(f"target_epsilon: must be > 0, got {target_epsilon}")
    _, utils = _opacus()
    return float(utils.get_noise_multiplier(target_epsilon=target_epsilon, target_delta=delta,
                                            sample_rate=sample_rate, steps=steps, accountant=accountant))


class Accountant:
    """Running epsilon for a training loop: `step()` after each noisy update."""

    def __init__(self, noise_multiplier: float, sample_rate: float, delta: float, accountant: str = "rdp"):
        check(accountant, sample_rate, delta)
        self.noise_multiplier, self.sample_rate, self.delta, self.kind = noise_multiplier, sample_rate, delta, accountant
        self.steps = 0

    def step(self) -> None:
        self.steps += 1

    @property
    def epsilon(self) -> float:
        return epsilon(self.noise_multiplier, self.sample_rate, self.steps, self.delta, self.kind)
