"""The specification and the kernels held to it.

Every kernel (all four cells, on the CPU and, marked ``gpu``, on the GPU) against
``kernels/cpu/reference.py``: outputs, final states, dx, dstate0 and every weight and bias
gradient, with and without lengths, with dstate None and given, gradients new and added into.
The reference itself against float64 central differences and against PyTorch. Each kind of check
is also shown to fail on a kernel that is slightly wrong.
"""
from dataclasses import replace

import numpy as np
import pytest

from rnnfast import testing
from rnnfast.kernels.cells import CELLS
from rnnfast.kernels.cpu import reference

DEVICES = testing.device_params()
SMALL = (5, 3, 4, 6)


@pytest.fixture(scope="module", params=DEVICES)
def dev(request):
    return testing.device(request.param)


def tolerance(dev, dtype):
    # the CPU's float32 kernels measure 7e-7 here; 2e-6 keeps the bound the layer tests had
    return 2e-6 if dev.name == "cpu" and dtype == np.float32 else None


@pytest.mark.parametrize("shape", testing.KERNEL_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("lengths", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("cell", CELLS)
def test_kernel_matches_reference(dev, cell, dtype, lengths, shape):
    case = testing.make_case(cell, shape, dtype, lengths)
    testing.check_kernel(dev, case, tol=tolerance(dev, dtype))


@pytest.mark.parametrize("grads", ["new", "added into", "weights only"])
@pytest.mark.parametrize("dstate", [True, False], ids=["dstate", "no-dstate"])
@pytest.mark.parametrize("lengths", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("cell", CELLS)
def test_kernel_dstate_and_grads_match_reference(dev, cell, lengths, dstate, grads):
    case = testing.make_case(cell, SMALL, np.float64, lengths, dstate, seed=1)
    start = None
    if grads != "new":  # what a layer's gradients hold before this backward
        rng = np.random.default_rng(2)
        start = tuple(rng.standard_normal(w.shape) for w in case.weights)
        if grads == "weights only":  # a layer without biases
            start = start[:2] + (None, None)
    testing.check_kernel(dev, case, start)


OPTION_SETS = [("recurrent_dropout",), ("zoneout",), ("zoneout_eval",), ("recurrent_dropout", "zoneout"),
               ("layer_norm",), ("layer_norm", "recurrent_dropout", "zoneout")]
# Layer norm divides by each row's spread, so float32 rounding (and the CPU's fast float32 tanh,
# 4e-7 absolute) reaches its outputs magnified by 1/std of the row: the LSTM's c' rows at these
# shapes measure 1.3e-5 in dw_ih, against 1.3e-7 without the norm.
LAYER_NORM_F32 = 5e-5


@pytest.mark.parametrize("shape", [SMALL, (7, 5, 6, 40), (4, 70, 8, 64)], ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("lengths", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("options", OPTION_SETS, ids="+".join)
@pytest.mark.parametrize("cell", CELLS)
def test_kernel_with_cell_options_matches_reference(dev, cell, options, lengths, shape):
    case = testing.make_case(cell, shape, np.float64, lengths, seed=5, options=options)
    testing.check_kernel(dev, case)
    f32 = LAYER_NORM_F32 if "layer_norm" in options else tolerance(dev, np.float32)
    testing.check_kernel(dev, case.astype(np.float32), tol=f32)


@pytest.mark.parametrize("options", [("recurrent_dropout", "zoneout"), ("layer_norm", "zoneout")], ids="+".join)
@pytest.mark.parametrize("cell", CELLS)
def test_kernel_with_cell_options_adds_into_grads(dev, cell, options):
    case = testing.make_case(cell, SMALL, np.float64, True, seed=6, options=options)
    rng = np.random.default_rng(2)
    params = case.weights + case.options.get("layer_norm", ())
    testing.check_kernel(dev, case, tuple(rng.standard_normal(w.shape) for w in params))


@pytest.mark.parametrize("cell", CELLS)
def test_cell_options_that_are_off_leave_the_kernel_as_it_was(dev, cell):
    """A mask of ones and zone fractions of 0 give the plain kernel's results bit for bit."""
    case = testing.make_case(cell, SMALL, np.float32, True, seed=7)
    H = case.state[0].shape[1]
    T, B = case.x.shape[:2]
    off = replace(case, options={"h_mask": np.ones((B, H), np.float32),
                                 "zone": tuple(np.zeros((T, B, H), np.float32) for _ in case.state)})
    plain, with_off = testing.run_kernels(dev, case), testing.run_kernels(dev, off)
    for name, value in plain.items():
        assert np.array_equal(value, with_off[name]), name


@pytest.mark.parametrize("given", ["dh", "dc"])
def test_lstm_kernel_with_one_state_gradient_matches_reference(dev, given):
    case = testing.make_case("lstm", SMALL, np.float64, lengths=True)
    dh, dc = case.dstate
    testing.check_kernel(dev, replace(case, dstate=(dh, None) if given == "dh" else (None, dc)))


@pytest.mark.parametrize("weight", range(4), ids=testing.WEIGHT_NAMES)
@pytest.mark.parametrize("cell", CELLS)
def test_kernel_check_fails_for_a_wrong_kernel(cell, weight):
    """A kernel whose weights are off by 1e-6 fails the check, which names the arrays it got wrong."""
    case = testing.make_case(cell, SMALL, np.float64, lengths=True)
    wrong = testing.perturbed(testing.device("cpu"), weight, 1e-6)
    with pytest.raises(AssertionError, match="relative error above") as info:
        testing.check_kernel(wrong, case)
    assert "y" in str(info.value)  # every weight reaches the output
    testing.check_kernel(testing.perturbed(testing.device("cpu"), weight, 0.0), case)  # and exact is fine


# -- the reference against central differences ------------------------------------------------
def reference_loss_and_gradients(case):
    """loss() = sum(y * dy) + sum(stateT * dstate) through the reference, which reads the case's
    arrays; and its analytic gradients by the reference's backward."""
    forward, backward = reference.KERNELS[case.cell]

    def loss():
        y, final, _ = forward(case.x, case.state, case.weights, case.lengths, **case.options)
        return np.sum(y * case.dy) + sum(np.sum(f * d) for f, d in zip(final, case.dstate))

    y, final, cache = forward(case.x, case.state, case.weights, case.lengths, **case.options)
    dx, dstate0, dweights = backward(case.dy, case.dstate, cache)
    names = [n[1:] for n in testing.output_names(case.cell, "layer_norm" in case.options)[-len(dweights):]]
    params = case.weights + case.options.get("layer_norm", ())
    variables = {"x": case.x, **{f"state{i}": s for i, s in enumerate(case.state)}, **dict(zip(names, params))}
    analytic = {"x": dx, **{f"state{i}": d for i, d in enumerate(dstate0)}, **dict(zip(names, dweights))}
    return loss, variables, analytic


@pytest.mark.parametrize("lengths", [None, [4, 2, 1]], ids=["full", "lengths"])
@pytest.mark.parametrize("cell", CELLS)
def test_reference_matches_central_differences(cell, lengths):
    case = testing.make_case(cell, (4, 3, 3, 3), np.float64, lengths, seed=3)
    loss, variables, analytic = reference_loss_and_gradients(case)
    testing.check_gradients(loss, variables, analytic, rtol=1e-6, atol=1e-8)
    if lengths is not None:  # padded inputs cannot matter
        assert np.all(analytic["x"][2:, 1] == 0) and np.all(analytic["x"][1:, 2] == 0)


@pytest.mark.parametrize("options", OPTION_SETS, ids="+".join)
@pytest.mark.parametrize("lengths", [None, [4, 2, 1]], ids=["full", "lengths"])
@pytest.mark.parametrize("cell", CELLS)
def test_reference_with_cell_options_matches_central_differences(cell, lengths, options):
    """The masks are fixed inputs: the loss is differentiable in everything else."""
    case = testing.make_case(cell, (4, 3, 3, 3), np.float64, lengths, seed=3, options=options)
    loss, variables, analytic = reference_loss_and_gradients(case)
    testing.check_gradients(loss, variables, analytic, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("cell", CELLS)
def test_central_differences_catch_a_wrong_gradient(cell):
    case = testing.make_case(cell, (3, 2, 2, 3), np.float64, seed=4)
    loss, variables, analytic = reference_loss_and_gradients(case)
    analytic["w_hh"].reshape(-1)[int(np.argmax(np.abs(analytic["w_hh"])))] *= 1 + 1e-4
    with pytest.raises(AssertionError, match="w_hh"):
        testing.check_gradients(loss, variables, analytic, rtol=1e-6, atol=1e-8)


def test_gradient_check_needs_float64():
    case = testing.make_case("gru", (2, 1, 2, 2), np.float32)
    loss, variables, analytic = reference_loss_and_gradients(case)
    with pytest.raises(TypeError, match="float64"):
        testing.check_gradients(loss, variables, analytic)


# -- the reference against PyTorch --------------------------------------------------------------
def errors_against_torch(dev, case):
    """{name: relative error} of ``dev``'s kernels on ``case`` against torch.nn.RNN/LSTM/GRU."""
    ours = testing.run_kernels(dev, case)
    H = case.state[0].shape[1]
    torch_names = [f"{name}_l0" for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
    module = testing.torch_recurrent(case.cell, case.x.shape[2], H, dict(zip(torch_names, case.weights)))
    theirs = testing.torch_run(module, case.x, tuple(s[None] for s in case.state), case.lengths, case.dy,
                               tuple(d[None] for d in case.dstate))
    for name in testing.output_names(case.cell):  # one layer, one direction: drop the states' L*D axis
        if name.endswith(("T", "0")):
            theirs[name] = theirs[name][0]
    for name, torch_name in zip(testing.WEIGHT_NAMES, torch_names):
        theirs[f"d{name}"] = theirs.pop(torch_name)
    assert set(theirs) == set(ours)
    return {name: testing.rel_err(ours[name], theirs[name]) for name in ours}


@pytest.mark.parametrize("cell", CELLS)
def test_reference_matches_torch(cell):
    pytest.importorskip("torch")
    case = testing.make_case(cell, (6, 4, 5, 7), np.float64, lengths=[6, 3, 5, 1], seed=5)
    errors = errors_against_torch(testing.REFERENCE, case)
    assert max(errors.values()) <= 1e-12, errors
    wrong = testing.perturbed(testing.REFERENCE, 1, 1e-6)
    assert max(errors_against_torch(wrong, case).values()) > 1e-9  # the comparison can fail
