import json
import math
import struct

import numpy as np
import pytest
import torch

from conftest import small_spec
from trainlab.engine import Hook, MemorySink, Trial
from trainlab.faults import flip_bits
from trainlab.faults.plan import FaultPlanOptions, draw_plan
from trainlab.spec import load_spec


def flip32(value: float, bit: int) -> float:
    """Reference: flip one bit of a float32 through its byte representation."""
    (as_int,) = struct.unpack("<I", struct.pack("<f", value))
    return struct.unpack("<f", struct.pack("<I", as_int ^ (1 << bit)))[0]


def test_bit_30_of_float32_known_values():
    out = flip_bits(torch.tensor([0.5, 1.0, -2.0, 0.15625]), [[30]] * 4)
    assert out[0].item() == 2.0**127  # 0x3F000000 -> 0x7F000000
    assert math.isinf(out[1].item())  # 0x3F800000 -> 0x7F800000
    assert out[2].item() == 0.0 and math.copysign(1, out[2].item()) == -1  # 0xC0000000 -> 0x80000000
    assert out[3].item() == flip32(0.15625, 30)


def test_bitflips_in_bfloat16_float16_and_float64():
    bf = flip_bits(torch.tensor([0.5], dtype=torch.bfloat16), [[14]])
    assert bf.dtype == torch.bfloat16 and bf.item() == 2.0**127  # 0x3F00 -> 0x7F00
    assert flip_bits(torch.tensor([0.5], dtype=torch.bfloat16), [[15]]).item() == -0.5  # sign bit
    assert flip_bits(torch.tensor([0.5], dtype=torch.float16), [[14]]).item() == 32768.0  # 0x3800 -> 0x7800
    assert flip_bits(torch.tensor([0.5], dtype=torch.float64), [[62]]).item() == 2.0**1023
    assert flip_bits(torch.tensor([1.0], dtype=torch.float64), [[63]]).item() == -1.0
    two = flip_bits(torch.tensor([1.0]), [[0, 1]])  # several bits in one element
    assert two.item() == struct.unpack("<f", struct.pack("<I", 0x3F800003))[0]
    with pytest.raises(ValueError, match="outside"):
        flip_bits(torch.tensor([1.0]), [[32]])


class Spy(Hook):
    """Runs after the injector (hooks run in order) and reads what the arm really holds."""

    def __init__(self, step, read):
        self.step, self.read, self.seen = step, read, {}

    def before_step(self, trial, arm, step):
        if step == self.step:
            self.seen[arm.name] = self.read(trial, arm)


def fault_trial(event: dict, arms=None, steps=6, dtype="float32", tmp_path=None, extra_hooks=()):
    spec = small_spec(events=[{"kind": "fault", **event}], plan__steps=steps, plan__dtype=dtype)
    if arms:
        spec["arms"] = arms
    trial = Trial(load_spec(spec), artifact_dir=tmp_path)
    trial.hooks += list(extra_hooks)
    summary = trial.run()
    return trial, summary, trial.hooks[0].realised()


def test_weight_bitflip_lands_exactly_and_identically_in_every_arm(tmp_path):
    spy = Spy(3, lambda trial, arm: dict(arm.model.named_parameters())["net.0.weight"].view(-1)[5].item())
    trial, _, records = fault_trial({"step": 3, "target": "weights", "tensor": "net.0.weight", "indices": [5],
                                     "fault": "bitflip", "bits": [[30]]}, tmp_path=tmp_path, extra_hooks=[spy])
    for arm in ("sgd", "adam"):
        old, new = records[arm]["old"][0], records[arm]["new"][0]
        assert new == flip32(old, 30) and spy.seen[arm] == new
        assert records[arm]["step"] == 3 and records[arm]["applied"]
    saved = json.loads((tmp_path / "injection_config.json").read_text())
    assert saved["indices"] == [5] and saved["step"] == 3 and set(saved["arms"]) == {"sgd", "adam"}
    with np.load(tmp_path / "injection_batch.npz", allow_pickle=False) as batch:
        assert batch["inputs"].shape == (32, 1, 28, 28) and batch["targets"].shape == (32,)


def test_adam_first_moment_bitflip():
    def moment(trial, arm):
        param = dict(arm.model.named_parameters())["net.2.weight"]
        state = arm.optimizer.state[param]
        return state["exp_avg"].view(-1)[3].item() if "exp_avg" in state else None

    spy = Spy(4, moment)
    _, _, records = fault_trial({"step": 4, "target": "optimizer_state", "tensor": "net.2.weight", "indices": [3],
                                 "fault": "bitflip", "bits": [[30]], "state": "first_moment"},
                                arms=[{"optimizer": "adam", "lr": 0.01}, {"optimizer": "sgd", "lr": 0.1}],
                                extra_hooks=[spy])
    adam = records["adam"]
    assert adam["state_key"] == "exp_avg" and adam["new"][0] == flip32(adam["old"][0], 30) == spy.seen["adam"]
    assert records["sgd"]["applied"] is False and "no first_moment" in records["sgd"]["reason"]


def test_activation_bitflip_reaches_the_next_layer():
    class Seen(Hook):
        def __init__(self):
            self.values = {}

        def before_step(self, trial, arm, step):  # registered after the injector's hook: sees its output
            if step == 2:
                module = dict(arm.model.named_modules())["net.1"]
                self.handle = module.register_forward_hook(
                    lambda m, i, out: self.values.__setitem__(arm.name, out.reshape(-1)[7].item()))

        def after_backward(self, trial, arm, step):
            if step == 2:
                self.handle.remove()

    seen = Seen()
    _, _, records = fault_trial({"step": 2, "target": "activations", "tensor": "net.1", "indices": [7],
                                 "fault": "bitflip", "bits": [[30]]}, extra_hooks=[seen])
    for arm in ("sgd", "adam"):
        assert records[arm]["new"][0] == flip32(records[arm]["old"][0], 30) == seen.values[arm]


def test_gradient_value_fault_and_float64_sites():
    _, _, records = fault_trial({"step": 2, "target": "gradients", "tensor": "net.0.bias", "indices": [0, 1],
                                 "fault": "value", "values": [1.5, -2.5]}, dtype="float64")
    assert records["sgd"]["new"] == [1.5, -2.5] and records["adam"]["new"] == [1.5, -2.5]
    assert records["sgd"]["old"] != records["sgd"]["new"]


@pytest.mark.parametrize("fault, values, check", [
    ("zero", None, lambda old, new: new == [0.0] * len(old)),
    ("sign_flip", None, lambda old, new: new == [-v for v in old]),
    ("add_noise", [0.5, -0.25], lambda old, new: np.allclose(new, [old[0] + 0.5, old[1] - 0.25])),
    ("mul_noise", [1.0, -1.0], lambda old, new: np.allclose(new, [2 * old[0], 0.0])),
])
def test_other_fault_models(fault, values, check):
    _, _, records = fault_trial({"step": 2, "tensor": "net.0.weight", "indices": [1, 2], "fault": fault,
                                 "values": values}, dtype="float64")
    assert check(records["sgd"]["old"], records["sgd"]["new"])


def test_stuck_at_holds_for_its_duration():
    spy = Spy(5, lambda trial, arm: dict(arm.model.named_parameters())["net.0.weight"].view(-1)[0].item())
    _, _, records = fault_trial({"step": 2, "tensor": "net.0.weight", "indices": [0], "fault": "stuck",
                                 "values": [0.75], "duration": 4}, extra_hooks=[spy], dtype="float64")
    assert records["sgd"]["applications"] == 4 and spy.seen["sgd"] == 0.75 and spy.seen["adam"] == 0.75


def test_bad_sites_are_named():
    from trainlab.errors import SpecError

    with pytest.raises(SpecError, match="no parameter 'fc9.weight' \\(allowed: net.0.weight"):
        fault_trial({"step": 2, "tensor": "fc9.weight", "indices": [0], "fault": "zero"})
    with pytest.raises(SpecError, match="index 9999 out of range"):
        fault_trial({"step": 2, "tensor": "net.0.bias", "indices": [9999], "fault": "zero"})
    with pytest.raises(SpecError, match="needs `bits` with one entry per index"):
        load_spec(small_spec(events=[{"kind": "fault", "step": 2, "tensor": "x", "indices": [0, 1],
                                      "fault": "bitflip", "bits": [[1]]}]))


def test_a_fault_that_kills_an_arm_is_divergence_not_a_crash():
    _, summary, _ = fault_trial({"step": 3, "tensor": "net.0.weight", "indices": list(range(16)), "fault": "value",
                                 "values": [3e38] * 16})
    for arm in ("sgd", "adam"):
        assert summary["arms"][arm]["diverged"] and summary["arms"][arm]["diverged_step"] == 3


def test_plan_is_drawn_from_the_seed_and_respects_ranges():
    options = FaultPlanOptions(fault="bitflip", bit_range=(23, 30), count=4, window=(5, 9))
    sizes = {"a.weight": 100, "b.bias": 3}
    plan = draw_plan(options, 20, seed=7, sizes=sizes, dtype="float32")
    assert plan == draw_plan(options, 20, seed=7, sizes=sizes, dtype="float32")
    assert plan != draw_plan(options, 20, seed=8, sizes=sizes, dtype="float32")
    for event in plan:
        assert 5 <= event["step"] <= 9
        assert all(23 <= b[0] <= 30 for b in event["bits"])
        n = sizes[event["tensor"]]
        assert len(event["indices"]) == min(4, n) and max(event["indices"]) < n
        assert event["indices"] == list(range(event["indices"][0], event["indices"][0] + len(event["indices"])))
    values = draw_plan(FaultPlanOptions(), 50, seed=1, sizes=sizes, dtype="float32")
    assert all(3.6e2 <= v <= 1.2e8 for e in values for v in e["values"])


# ---------------------------------------------------------------- mitigations


def mitigated(event, mitigation, steps=25, optimizer="sgd", lr=0.1):
    arms = [{"name": "plain", "optimizer": optimizer, "lr": lr},
            {"name": "guarded", "optimizer": optimizer, "lr": lr, "mitigations": [mitigation]}]
    spec = small_spec(events=[{"kind": "fault", **event}], plan__steps=steps, plan__dtype="float32")
    spec["arms"] = arms

    sink = MemorySink()
    summary = Trial(load_spec(spec), sink=sink).run()
    return summary["arms"], sink.records


def test_skip_nonfinite_saves_an_arm_from_an_infinite_gradient():
    arms, records = mitigated({"step": 5, "target": "gradients", "tensor": "net.0.weight", "indices": list(range(8)),
                               "fault": "value", "values": [3e38] * 8}, {"kind": "skip_nonfinite"})
    assert arms["plain"]["diverged"] and not arms["guarded"]["diverged"]
    assert [r["step"] for r in records if r.get("event") == "skipped"] == [5]


def test_grad_clip_bounds_a_corrupted_gradient():
    arms, _ = mitigated({"step": 5, "target": "gradients", "tensor": "net.0.weight", "indices": [0],
                         "fault": "value", "values": [1e30]}, {"kind": "grad_clip", "max_norm": 1.0})
    assert arms["plain"]["diverged"] and not arms["guarded"]["diverged"]


def test_rollback_undoes_a_weight_fault():
    arms, records = mitigated({"step": 10, "tensor": "net.0.weight", "indices": list(range(16)), "fault": "value",
                               "values": [1e6] * 16}, {"kind": "rollback"})
    assert [r["step"] for r in records if r.get("event") == "rollback"] == [10]
    assert arms["guarded"]["final_test_loss"] < 3 and not arms["guarded"]["diverged"]
    assert arms["plain"]["diverged"] or arms["plain"]["final_test_loss"] > arms["guarded"]["final_test_loss"]


def test_bound_state_clamps_a_corrupted_adam_moment():
    arms, _ = mitigated({"step": 5, "target": "optimizer_state", "tensor": "net.0.weight", "indices": list(range(8)),
                         "fault": "value", "values": [1e8] * 8}, {"kind": "bound_state", "bound": 1.0},
                        optimizer="adam", lr=0.01)
    assert arms["guarded"]["final_test_loss"] < arms["plain"]["final_test_loss"] or arms["plain"]["diverged"]
