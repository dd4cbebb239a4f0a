"""Motion trainer losses (DeX §3.2) against hand-computed values on small tensors, and the VGG19
perceptual loss loaded from a named file (generated here), refused in one line when missing."""

import math

import pytest
import torch
import torch.nn.functional as F

from factorportrait.evaluation.networks import MissingWeightsError
from factorportrait.motion.losses import (VGGPerceptualLoss, discriminator_adversarial_loss,
                                          feature_matching_loss, generator_adversarial_loss,
                                          load_vgg_perceptual, pyramid_l1_loss,
                                          reconstruction_loss)


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def test_reconstruction_loss_is_the_mean_absolute_error():
    prediction = torch.tensor([[[[0.0, 1.0], [-2.0, 3.0]]]])
    assert reconstruction_loss(prediction, torch.zeros_like(prediction)).item() == 1.5


def test_pyramid_l1_averages_the_levels():
    # Level 0: |±1| everywhere -> 1; level 1: the 2x2 average is 0 -> 0; mean 0.5.
    prediction = torch.tensor([[[[1.0, -1.0], [1.0, -1.0]]]])
    target = torch.zeros_like(prediction)
    assert pyramid_l1_loss(prediction, target, levels=2).item() == 0.5
    assert pyramid_l1_loss(prediction, target, levels=1).item() == 1.0
    with pytest.raises(ValueError, match="levels"):
        pyramid_l1_loss(prediction, target, levels=0)


def scales(*logits: list[float]) -> list[list[torch.Tensor]]:
    """Discriminator outputs: one scale per logit list, with a dummy feature before it."""
    return [[torch.zeros(1, 1, 1, 1), torch.tensor(values).view(1, 1, 1, -1)]
            for values in logits]


def test_generator_adversarial_losses():
    fake = scales([1.0, -2.0], [3.0])
    # hinge: mean over scales of −mean D(G): (0.5 + −3) / 2
    assert generator_adversarial_loss(fake, "hinge").item() == pytest.approx(-1.25)
    expected = ((softplus(-1) + softplus(2)) / 2 + softplus(-3)) / 2
    assert generator_adversarial_loss(fake, "non_saturating").item() == pytest.approx(expected)


def test_discriminator_adversarial_losses():
    real, fake = scales([0.5, 2.0]), scales([-0.5, 1.0])
    # relu(1 − [0.5, 2]) = [0.5, 0] -> 0.25; relu(1 + [−0.5, 1]) = [0.5, 2] -> 1.25
    assert discriminator_adversarial_loss(real, fake, "hinge").item() == pytest.approx(1.5)
    expected = (softplus(-0.5) + softplus(-2)) / 2 + (softplus(-0.5) + softplus(1)) / 2
    assert discriminator_adversarial_loss(real, fake, "non_saturating").item() == \
        pytest.approx(expected)
    with pytest.raises(ValueError, match="kind"):
        discriminator_adversarial_loss(real, fake, "wasserstein")


def test_feature_matching_skips_logits_and_detaches_the_real_side():
    real = [[torch.tensor([1.0, 2.0], requires_grad=True), torch.tensor([9.0])],
            [torch.tensor([0.0]), torch.tensor([2.0, 2.0]), torch.tensor([-9.0])]]
    fake = [[torch.tensor([2.0, 0.0], requires_grad=True), torch.tensor([0.0])],
            [torch.tensor([4.0]), torch.tensor([2.0, 3.0]), torch.tensor([9.0])]]
    # layers: mean |[1, −2]| = 1.5; |4| = 4; mean |[0, 1]| = 0.5 -> (1.5 + 4 + 0.5) / 3 = 2
    loss = feature_matching_loss(real, fake)
    assert loss.item() == pytest.approx(2.0)
    loss.backward()
    assert real[0][0].grad is None and fake[0][0].grad is not None


def test_missing_vgg_file_is_refused_in_one_line(tmp_path):
    missing = tmp_path / "vgg19.pth"
    with pytest.raises(MissingWeightsError) as error:
        load_vgg_perceptual(missing)
    message = str(error.value)
    assert isinstance(error.value, FileNotFoundError)
    assert "\n" not in message and str(missing) in message
    assert "torchvision" in message and "vgg19" in message and "vgg19-dcbb9e9d.pth" in message


def small_vgg_file(path, taps=(1, 6), seed=0):
    """A torchvision-format ``vgg19`` checkpoint holding the layers up to ``taps[-1]``."""
    g = torch.Generator().manual_seed(seed)
    layers = VGGPerceptualLoss(taps, (1.0,) * len(taps)).features.state_dict()
    state = {f"features.{k}": torch.randn(v.shape, generator=g) * 0.1 for k, v in layers.items()}
    torch.save(state, path)
    return state


def test_vgg_perceptual_loss_matches_a_hand_computation(tmp_path):
    path = tmp_path / "vgg19-dcbb9e9d.pth"
    state = small_vgg_file(path)
    loss = load_vgg_perceptual(path, taps=(1, 6), weights=(0.5, 2.0))
    assert not any(p.requires_grad for p in loss.parameters())
    g = torch.Generator().manual_seed(1)
    x, y = (torch.rand(2, 3, 16, 16, generator=g) * 2 - 1 for _ in range(2))

    def taps(images):
        mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
        std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
        h = ((images + 1) / 2 - mean) / std
        relu1_1 = F.relu(F.conv2d(h, state["features.0.weight"], state["features.0.bias"],
                                  padding=1))
        h = F.relu(F.conv2d(relu1_1, state["features.2.weight"], state["features.2.bias"],
                            padding=1))
        h = F.max_pool2d(h, 2)
        relu2_1 = F.relu(F.conv2d(h, state["features.5.weight"], state["features.5.bias"],
                                  padding=1))
        return relu1_1, relu2_1

    (a1, a2), (b1, b2) = taps(x), taps(y)
    expected = 0.5 * (a1 - b1).abs().mean() + 2.0 * (a2 - b2).abs().mean()
    assert loss(x, y).item() == pytest.approx(expected.item(), rel=1e-5)
    assert loss(x, x).item() == 0
    prediction = x.clone().requires_grad_()
    loss(prediction, y).backward()
    assert prediction.grad.abs().sum() > 0


def test_a_file_that_is_not_vgg19_is_named(tmp_path):
    path = tmp_path / "other.pth"
    state = small_vgg_file(path)
    state["features.5.weight"] = torch.zeros(256, 128, 3, 3)  # VGG19's is (128, 64, 3, 3)
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"other.pth is not torchvision's vgg19 checkpoint: "
                                         r"features.5.weight should be \(128, 64, 3, 3\)"):
        load_vgg_perceptual(path, taps=(1, 6), weights=(1.0, 1.0))
    with pytest.raises(ValueError, match="taps"):
        VGGPerceptualLoss(taps=(6, 1), weights=(1.0, 1.0))
