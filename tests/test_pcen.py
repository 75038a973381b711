"""Vectorised trainable PCEN against the reference recursion written as a plain loop over frames."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from core.model.pcen import (
    DELTA_FLOOR,
    TrainablePCEN,
    constrained,
    pcen,
    pcen_loop,
    smooth,
    smoother_coefficient,
)

S_FLOAT32 = float(torch.tensor(320 / (32000 * 0.06)))  # the reference's float32 buffer value of 1/6


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def loop_smoother(energy: torch.Tensor, s: float) -> torch.Tensor:
    """M[0] = E[0]; M[t] = (1 - s) M[t-1] + s E[t], one frame at a time."""
    frames = [energy[..., 0]]
    for t in range(1, energy.shape[-1]):
        frames.append((1 - s) * frames[-1] + s * energy[..., t])
    return torch.stack(frames, dim=-1)


def mel_energy(batch: int = 3, n_mels: int = 64, n_fft: int = 1024, seconds: float = 4.0) -> torch.Tensor:
    """Real magnitude mel spectrograms [batch, 1, n_mels, frames] of noise at gains 1e-3 .. 1."""
    from torchaudio.transforms import MelSpectrogram

    generator = torch.Generator().manual_seed(0)
    gains = torch.logspace(-3, 0, batch)[:, None]
    waveforms = torch.randn(batch, int(32000 * seconds), generator=generator) * gains
    mel = MelSpectrogram(sample_rate=32000, n_fft=n_fft, hop_length=320, n_mels=n_mels, f_min=20, f_max=16000,
                         power=1.0)
    with torch.no_grad():
        return mel(waveforms).unsqueeze(1)


def scalars(alpha=0.98, delta=2.0, r=0.5, dtype=torch.float64):
    return [torch.tensor(value, dtype=dtype, requires_grad=True) for value in (alpha, delta, r)]


@settings(max_examples=25, deadline=None)
@given(frames=st.integers(1, 700), rows=st.integers(1, 5), s=st.sampled_from([S_FLOAT32, 0.01, 0.37, 1.0]),
       block=st.sampled_from([1, 7, 16, 32]))
def test_smoother_equals_the_loop_in_float64(frames, rows, s, block):
    energy = torch.rand(rows, frames, dtype=torch.float64, generator=torch.Generator().manual_seed(frames)) * 10
    torch.testing.assert_close(smooth(energy, s, block=block), loop_smoother(energy, s), rtol=0, atol=1e-10)


def test_smoother_stays_finite_and_exact_on_long_clips_in_float32():
    # A naive (1-s)^-t rescaling overflows float32 after ~500 frames at s = 1/6; the blocked scan must not.
    energy = torch.rand(2, 20000, generator=torch.Generator().manual_seed(1)) + 0.5
    smoothed = smooth(energy, S_FLOAT32)
    assert torch.isfinite(smoothed).all()
    expected = loop_smoother(energy.double(), S_FLOAT32)
    assert (smoothed.double() - expected).abs().max() < 1e-5


@pytest.mark.parametrize("denominator_eps", [0.0, 1e-6])
def test_pcen_equals_the_loop_in_float64(denominator_eps):
    energy = mel_energy().double()
    ours = pcen(energy, S_FLOAT32, *scalars(), denominator_eps=denominator_eps, chunk_elements=5000)
    reference = pcen_loop(energy, S_FLOAT32, *scalars(), denominator_eps=denominator_eps)
    assert (ours - reference).abs().max() <= 1e-6


@pytest.mark.parametrize("denominator_eps", [0.0, 1e-6])
@pytest.mark.parametrize("raw", [(0.98, 2.0, 0.5), (0.5, -0.7, 0.9), (1.2, 0.3, 1.5), (0.005, 3.0, 0.005)],
                         ids=["init", "negative-delta", "clamped-high", "clamped-low"])
def test_gradients_equal_autograd_through_the_loop(raw, denominator_eps):
    energy = mel_energy(batch=2, n_mels=16).double()
    upstream = torch.randn(energy.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    ours, reference = scalars(*raw), scalars(*raw)
    (pcen(energy, S_FLOAT32, *ours, denominator_eps=denominator_eps, chunk_elements=3000) * upstream).sum().backward()
    (pcen_loop(energy, S_FLOAT32, *reference, denominator_eps=denominator_eps) * upstream).sum().backward()
    for mine, theirs in zip(ours, reference, strict=True):
        torch.testing.assert_close(mine.grad, theirs.grad, rtol=1e-9, atol=1e-9)


def test_hand_written_backward_passes_gradcheck():
    energy = mel_energy(batch=1, n_mels=4, seconds=0.2).double()

    def function(alpha, delta, r):
        return pcen(energy, S_FLOAT32, alpha, delta, r, denominator_eps=1e-6)

    assert torch.autograd.gradcheck(function, tuple(scalars(0.8, 1.5, 0.6)))


@pytest.mark.parametrize("n_mels,n_fft", [(64, 1024), (128, 2048)])
def test_float32_agrees_with_the_float64_loop_to_1e_5(n_mels, n_fft):
    energy = mel_energy(batch=4, n_mels=n_mels, n_fft=n_fft)
    ours = pcen(energy, S_FLOAT32, *scalars(dtype=torch.float32))
    reference = pcen_loop(energy.double(), S_FLOAT32, *scalars())
    assert ours.dtype == torch.float32
    assert (ours.double() - reference).abs().max() <= 1e-5


@pytest.mark.parametrize("denominator_eps", [0.0, 1e-6])
def test_chunking_does_not_change_the_result_or_the_gradients(denominator_eps):
    energy = mel_energy(batch=2, n_mels=32).double()
    upstream = torch.randn(energy.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    whole_params = scalars()
    whole = pcen(energy, S_FLOAT32, *whole_params, denominator_eps=denominator_eps, chunk_elements=1 << 30)
    (whole * upstream).sum().backward()
    for chunk_elements in (1, 500, 4096):
        params = scalars()
        chunked = pcen(energy, S_FLOAT32, *params, denominator_eps=denominator_eps, chunk_elements=chunk_elements)
        (chunked * upstream).sum().backward()
        torch.testing.assert_close(chunked, whole, rtol=0, atol=1e-12)
        for mine, theirs in zip(params, whole_params, strict=True):
            torch.testing.assert_close(mine.grad, theirs.grad, rtol=1e-12, atol=1e-12)


def test_silence_gives_zero_output_and_finite_gradients():
    module = TrainablePCEN(S_FLOAT32)
    output = module(torch.zeros(2, 1, 8, 50))
    output.sum().backward()
    assert torch.equal(output, torch.zeros_like(output))  # E = 0: (0 + delta)^r - delta^r
    assert all(torch.isfinite(p.grad) for p in (module.alpha, module.delta, module.r))


def test_module_has_three_trainable_scalars_and_a_fixed_smoother():
    module = TrainablePCEN(smoother_coefficient(320, 32000, 0.06))
    assert sorted(name for name, _ in module.named_parameters()) == ["alpha", "delta", "r"]
    assert [name for name, _ in module.named_buffers()] == ["s"]
    assert module.s.item() == pytest.approx(1 / 6)
    energy = mel_energy(batch=1, n_mels=8, seconds=0.5)
    module(energy).square().sum().backward()
    assert all(p.grad is not None and p.grad.abs() > 0 for p in module.parameters())


def test_energy_with_gradient_is_refused():
    with pytest.raises(ValueError, match="no_grad"):
        pcen(torch.rand(1, 4, 10, requires_grad=True), S_FLOAT32, *scalars(dtype=torch.float32))


def test_invalid_smoother_coefficient_is_refused():
    with pytest.raises(ValueError, match="hop, sample rate and T"):
        TrainablePCEN(0.0)


def test_the_inference_paths_equal_the_fused_kernel():
    """'plain' (one matmul smoother: what ONNX export traces) and 'loop' (the reference recursion)."""
    from core.model.pcen import TrainablePCEN

    pcen_module = TrainablePCEN(1 / 6, denominator_eps=1e-6)
    energy = torch.rand(3, 64, 401, generator=torch.Generator().manual_seed(0)) * 5
    fused = pcen_module(energy)
    for ops in ("plain", "loop"):
        pcen_module.ops = ops
        torch.testing.assert_close(pcen_module(energy), fused, atol=2e-6, rtol=1e-5)


# ------------------------------------------------------------------ found by mutation testing (RELIABILITY.md 5)

def test_module_defaults_are_the_reference_settings_and_float64_energy_stays_float64():
    """The module's float32 scalars and float32 buffer s on float64 energy: the reference PCEN (alpha .98, delta 2,
    r .5, eps 1e-6, no denominator eps) computed in float64 throughout, with no warning on the way."""
    import warnings

    module = TrainablePCEN(smoother_coefficient(320, 32000, 0.06))
    assert (module.eps, module.denominator_eps) == (1e-6, 0.0)
    energy = mel_energy(batch=1, n_mels=8, seconds=1.0).double()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ours = module(energy)
    assert [p.item() for p in (module.alpha, module.delta, module.r)] == [pytest.approx(v, rel=1e-7)
                                                                          for v in (0.98, 2.0, 0.5)]
    # The constraints apply to the float32 scalars (delta' = |delta| + 1e-6 rounded to float32); from there on
    # everything is float64. The loop gets raw float64 values that its own constraints map onto those.
    alpha, delta, r = (p.detach().double() for p in constrained(module.alpha, module.delta, module.r))
    reference = pcen_loop(energy, float(module.s), alpha, delta - DELTA_FLOOR, r, eps=1e-6, denominator_eps=0.0)
    assert ours.dtype == torch.float64
    assert (ours - reference).abs().max() <= 1e-12


def test_a_denominator_eps_of_one_is_used_not_dropped():
    energy = mel_energy(batch=1, n_mels=8, seconds=0.5).double()
    for denominator_eps in (1.0, 0.25):
        ours = pcen(energy, S_FLOAT32, *scalars(), denominator_eps=denominator_eps)
        reference = pcen_loop(energy, S_FLOAT32, *scalars(), denominator_eps=denominator_eps)
        assert (ours - reference).abs().max() <= 1e-12


def test_smoother_runs_along_the_last_axis_of_any_shape():
    energy = torch.rand(2, 3, 50, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(smooth(energy, 0.2), loop_smoother(energy, 0.2), rtol=0, atol=1e-12)


def test_smoother_matrix_is_built_in_float64_from_a_python_float():
    from core.model.pcen import smoother_matrix

    s, frames = 1 / 6, 300
    steps = np.arange(frames)
    gaps = steps[None, :] - steps[:, None]
    expected = np.where(gaps >= 0, s * (1 - s) ** np.maximum(gaps, 0), 0.0)
    expected[0] = (1 - s) ** steps
    matrix = smoother_matrix(s, frames)
    assert matrix.dtype == torch.float32
    np.testing.assert_allclose(matrix.numpy(), expected.astype(np.float32), rtol=2e-7, atol=0)


def test_smoother_coefficient_of_one_is_allowed_and_outside_0_1_refused():
    energy = torch.rand(1, 4, 30, generator=torch.Generator().manual_seed(5)) + 0.1
    module = TrainablePCEN(1.0)  # s = 1: M = E, no smoothing
    torch.testing.assert_close(module(energy), pcen_loop(energy, 1.0, module.alpha, module.delta, module.r))
    for s in (1.5, 2.0, -0.1):
        with pytest.raises(ValueError) as refused:
            TrainablePCEN(s)
        assert str(refused.value) == f"PCEN smoother coefficient s must be in (0, 1], got {s}; check hop, sample rate and T"


def test_each_ops_runs_its_own_path_and_an_unknown_one_is_refused():
    from core.model.pcen import pcen_plain, smoother_matrix

    module = TrainablePCEN(S_FLOAT32, denominator_eps=1e-6)
    assert module.ops == "fused"
    energy = torch.rand(2, 16, 101, generator=torch.Generator().manual_seed(6)) * 5
    params = (module.alpha, module.delta, module.r)
    with torch.no_grad():
        expected = {
            "fused": pcen(energy, module.s, *params, 1e-6, 1e-6),
            "plain": pcen_plain(energy, smoother_matrix(module.s, 101), *params, 1e-6, 1e-6),
            "loop": pcen_loop(energy, float(module.s), *params, 1e-6, 1e-6),
        }
        for ops, values in expected.items():
            module.ops = ops
            assert torch.equal(module(energy), values), ops
        assert not torch.equal(expected["fused"], expected["plain"])  # the paths differ in the last bits
        module.ops = "fast"
        with pytest.raises(ValueError, match=r"^TrainablePCEN.ops is 'fast'; use 'fused', 'plain' or 'loop'$"):
            module(energy)
    assert repr(TrainablePCEN(1 / 6)) == "TrainablePCEN(s=0.166667, eps=1e-06, denominator_eps=0)"


def test_the_fused_module_refuses_energy_with_a_gradient_word_for_word():
    message = r"^PCEN treats the mel energy as a constant: compute it under torch\.no_grad\(\)$"
    with pytest.raises(ValueError, match=message):
        TrainablePCEN(S_FLOAT32)(torch.rand(1, 4, 10, requires_grad=True))


def test_padding_never_leaks_even_from_buffers_that_start_as_nan(monkeypatch):
    """The fused kernel's chunk buffers come from new_empty (whatever memory held before): their zero padding
    must be written, or a NaN there would leak through the block product into real frames."""
    real_new_empty = torch.Tensor.new_empty
    monkeypatch.setattr(torch.Tensor, "new_empty", lambda self, *size, **kwargs: real_new_empty(
        self, *size, **kwargs).fill_(float("nan")))
    energy = torch.rand(40, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(7))  # rows > frames
    ours = pcen(energy, S_FLOAT32, *scalars(), chunk_elements=1 << 20)
    assert torch.isfinite(ours).all()
    assert (ours - pcen_loop(energy, S_FLOAT32, *scalars())).abs().max() <= 1e-12
