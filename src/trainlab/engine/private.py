"""A DP-SGD arm: the arm's backward goes through trainlab.privacy's engine, and the privacy
spent so far is reported at every evaluation (`epsilon` in eval records) and in the summary.

The sampling rate is batch_size / n_train (1 for full-batch arms). With plan.sampler
`poisson` the batches are Poisson-sampled, as the accountant assumes, and gradients are
normalised by the expected batch size; with the other samplers the accountant's figure is the
usual approximation for shuffled fixed-size batches.
"""

from ..errors import SpecError
from ..privacy import DPEngine, per_sample_loss
from ..privacy.accounting import epsilon, noise_for


class PrivateArm:
    def __init__(self, trial, arm: dict, model):
        options = arm["privacy"]
        where = f"arms.{arm['name']}.privacy"
        if not trial.task.is_cross_entropy(trial.options) or trial.generated:
            raise SpecError(where, f"task {trial.task.name!r} has no per-sample cross-entropy loss over a fixed "
                                   "training set, which DP-SGD needs")
        if trial.plan["grad_accumulation"] != 1:
            raise SpecError("plan.grad_accumulation", "DP-SGD arms clip whole batches: use 1")
        n, batch = trial.data.n_train, trial.plan["batch_size"]
        full = trial.plan["sampler"] == "full" or arm["optimizer"] == "gd"
        self.sample_rate = 1.0 if full else min(1.0, batch / n)
        self.delta, self.accountant = options["delta"], options["accountant"]
        if options["noise_multiplier"] is not None:
            self.noise_multiplier = options["noise_multiplier"]
        else:
            self.noise_multiplier = noise_for(options["target_epsilon"], self.sample_rate, trial.total_steps,
                                              self.delta, self.accountant)
        self.engine = DPEngine(model, options["mode"], options["max_grad_norm"], self.noise_multiplier,
                               options["clipping"], seed=trial.seed_for(f"dp-noise/{arm['name']}"),
                               expected_batch_size=batch if trial.plan["sampler"] == "poisson" and not full else None)
        self.clipped_fraction = None

    def backward(self, x, y) -> tuple[float, object]:
        result = self.engine.backward(x, y, per_sample_loss)
        if result.factors is not None and len(result.factors):
            clipped = result.factors < 1
            self.clipped_fraction = float((clipped.any(1) if clipped.dim() > 1 else clipped).double().mean())
        return result.loss, result.output

    def epsilon(self, steps: int) -> float:
        return epsilon(self.noise_multiplier, self.sample_rate, steps, self.delta, self.accountant)

    def summary(self, steps: int) -> dict:
        return {"mode": self.engine.mode, "noise_multiplier": self.noise_multiplier, "sample_rate": self.sample_rate,
                "delta": self.delta, "accountant": self.accountant, "epsilon": self.epsilon(steps),
                "clipped_fraction_last_step": self.clipped_fraction}
