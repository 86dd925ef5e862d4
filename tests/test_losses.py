import pytest
import torch
from focal_frequency_loss import FocalFrequencyLoss

from mixmask.losses import focal_frequency_loss, masked_reconstruction_losses, masked_spatial_loss


@pytest.mark.parametrize("size", [(4, 3, 32, 32), (3, 3, 28, 28), (2, 3, 31, 17), (1, 1, 16, 24)])
@pytest.mark.parametrize(
    "ave_spectrum, log_matrix, batch_matrix",
    [(True, True, True), (False, False, False), (True, False, True), (False, True, False)],
)
@pytest.mark.parametrize("alpha", [1.0, 0.5])
def test_focal_frequency_loss_equals_reference_package(size, ave_spectrum, log_matrix, batch_matrix, alpha):
    g = torch.Generator().manual_seed(0)
    pred = torch.randn(size, generator=g, dtype=torch.float64, requires_grad=True)
    target = torch.randn(size, generator=g, dtype=torch.float64)
    options = dict(alpha=alpha, ave_spectrum=ave_spectrum, log_matrix=log_matrix, batch_matrix=batch_matrix)
    reference = FocalFrequencyLoss(**options)(pred, target)
    (reference_grad,) = torch.autograd.grad(reference, pred)
    ours = focal_frequency_loss(pred, target, **options)
    (our_grad,) = torch.autograd.grad(ours, pred)
    assert ours.dtype == torch.float32  # always computed in fp32
    assert ours.item() == pytest.approx(reference.item(), rel=1e-5)
    torch.testing.assert_close(our_grad, reference_grad, rtol=1e-4, atol=1e-7 * reference_grad.abs().max().item())


def test_focal_frequency_loss_is_zero_for_perfect_prediction_and_grows_with_error():
    target = torch.rand(2, 3, 16, 16)
    assert focal_frequency_loss(target, target).item() == 0.0
    small = focal_frequency_loss(target + 0.01 * torch.randn_like(target), target)
    large = focal_frequency_loss(target + 0.5 * torch.randn_like(target), target)
    assert 0 < small < large


def test_focal_frequency_loss_under_bf16_autocast_stays_fp32():
    pred, target = torch.randn(2, 3, 24, 24), torch.randn(2, 3, 24, 24)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = focal_frequency_loss(pred.bfloat16(), target)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(focal_frequency_loss(pred.bfloat16().float(), target).item(), rel=1e-6)


def reference_spatial(pred, target, mask, kind):  # the official head: sum(loss * M) / (sum(M) + 1e-5) / 3
    d = pred - target
    loss = {"l1": d.abs(), "l2": d**2, "focal_l1": d.abs() * (2 * torch.sigmoid(0.2 * d.abs()) - 1)}[kind]
    m = mask[:, None].double()
    return (loss * m).sum() / (m.sum() + 1e-5) / 3


@pytest.mark.parametrize("kind", ["l1", "l2", "focal_l1"])
def test_masked_spatial_loss_averages_masked_pixel_channels(kind):
    g = torch.Generator().manual_seed(0)
    pred, target = (
        torch.randn(2, 3, 8, 8, generator=g, dtype=torch.float64),
        torch.randn(2, 3, 8, 8, generator=g, dtype=torch.float64),
    )
    mask = torch.rand(2, 8, 8, generator=g) < 0.4
    ours = masked_spatial_loss(pred, target, mask, kind)
    assert ours.item() == pytest.approx(reference_spatial(pred, target, mask, kind).item(), rel=1e-5)
    # unmasked pixels do not count
    changed = torch.where(mask[:, None], pred, pred + 100)
    assert masked_spatial_loss(changed, target, mask, kind).item() == pytest.approx(ours.item())


def test_focal_l1_is_quadratic_for_small_errors():
    target = torch.zeros(1, 3, 2, 2)
    mask = torch.ones(1, 2, 2, dtype=torch.bool)
    small = masked_spatial_loss(torch.full_like(target, 0.01), target, mask, "focal_l1")
    assert small.item() == pytest.approx(0.1 * 0.01**2, rel=1e-2)  # |d| * (2 sigmoid(0.2 |d|) - 1) ~ 0.1 d^2


def frequency_input(pred, target, mask, unmasked, unmasked_weight):
    """The frequency loss's input as the official code composes it: the prediction on masked pixels; on unmasked ones
    a stand-in (the detached prediction, its mix with the target, or the target) carrying ``unmasked_weight`` of the
    gradient."""
    stand_in = {"prediction": pred.detach(), "mixed": 0.5 * pred.detach() + 0.5 * target, "target": target}[unmasked]
    m = mask[:, None].to(pred.dtype)
    keep = m + (1 - m) * unmasked_weight
    return pred * keep + stand_in * (1 - keep)


@pytest.mark.parametrize("kind, gamma", [("focal_l1", 1.0), ("focal_l1", 2.0), ("focal_l1", 0.5), ("l1", 1), ("l2", 1)])
@pytest.mark.parametrize("unmasked", ["prediction", "mixed", "target"])
def test_masked_reconstruction_losses_equal_autograd_through_the_composition(kind, gamma, unmasked):
    """The fused terms and their hand-written gradient equal the spatial loss and the batch mean of (frequency input -
    target) composed from plain operations, in float64; with one image fully unmasked and one fully masked."""
    g = torch.Generator().manual_seed(0)
    pred = torch.randn(4, 3, 8, 10, generator=g, dtype=torch.float64, requires_grad=True)
    target = torch.randn(4, 3, 8, 10, generator=g, dtype=torch.float64)
    mask = torch.rand(4, 8, 10, generator=g) < 0.5
    mask[0], mask[1] = False, True
    ours = masked_reconstruction_losses(pred, target, mask, kind, 0.2, gamma, unmasked, 1e-3)
    reference = (
        masked_spatial_loss(pred, target, mask, kind, 0.2, gamma),
        (frequency_input(pred, target, mask, unmasked, 1e-3) - target).mean(0, keepdim=True),
    )
    weights = (torch.tensor(0.7, dtype=torch.float64), torch.randn(1, 3, 8, 10, generator=g, dtype=torch.float64))
    grads = [torch.autograd.grad(terms, pred, weights, retain_graph=True)[0] for terms in (ours, reference)]
    for got, expected in zip(ours, reference, strict=True):
        assert got.dtype == torch.float64
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-10, atol=1e-14)
    # each term alone (the other unused) gets its own gradient only
    for i in (0, 1):
        (alone,) = torch.autograd.grad(ours[i], pred, weights[i], retain_graph=True)
        (expected,) = torch.autograd.grad(reference[i], pred, weights[i], retain_graph=True)
        torch.testing.assert_close(alone, expected, rtol=1e-10, atol=1e-14)


def test_masked_reconstruction_losses_in_float32_and_bf16_and_without_masked_pixels():
    pred, target = torch.randn(2, 3, 6, 6, requires_grad=True), torch.randn(2, 3, 6, 6)
    mask = torch.zeros(2, 6, 6, dtype=torch.bool)
    spatial, difference = masked_reconstruction_losses(pred, target, mask)
    assert spatial.item() == 0.0 and difference.dtype == torch.float32
    torch.testing.assert_close(difference, (0.5005 * (pred - target)).mean(0, keepdim=True))
    half = pred.detach().bfloat16().requires_grad_()
    spatial, difference = masked_reconstruction_losses(half, target, ~mask)
    (spatial + difference.sum()).backward()
    assert spatial.dtype == torch.float32 and half.grad.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="unknown unmasked mode"):
        masked_reconstruction_losses(pred, target, mask, unmasked="zero")


def test_frequency_loss_without_focal_weights_is_the_mean_squared_spectrum_distance():
    """focal=False (A2MIM's ablation "L_freq without weights"): mean over C, H, W of |F(mean pred) - F(mean target)|^2
    with the full two-sided FFT, in float64."""
    pred, target = torch.randn(4, 3, 12, 10), torch.randn(4, 3, 12, 10)
    diff = (pred.double() - target.double()).mean(0)
    expected = torch.fft.fft2(diff, norm="ortho").abs().square().mean()
    got = focal_frequency_loss(pred, target, focal=False)
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)
    assert got.item() != pytest.approx(focal_frequency_loss(pred, target).item(), rel=1e-2)
